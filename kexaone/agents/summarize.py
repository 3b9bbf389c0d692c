"""The summarizer sub-agent: the same model condenses one opened document with respect to the question.

`open(doc, pattern)` never puts raw document text into the agent's context: the matching passages go to a separate
chat (no tools) that answers in K-EXAONE's search-agent shape, `Summary:\\n...\\n\\nAnswer to the question:\\n...`,
and only that text becomes the tool result. An empty reply falls back to the passages themselves, cut short, so a
weak model still sees evidence.

This module builds prompts and calls the backend; it does not find passages (kexaone.agents.search).
"""

from __future__ import annotations

from collections.abc import Sequence

SUMMARY_SYSTEM = (
    "You read one document for a research assistant. Using only the passages given, write:\n"
    "Summary:\n<the facts in the passages that bear on the question, with names, numbers and dates kept exact>\n\n"
    "Answer to the question:\n<the answer if the passages contain it, otherwise 'not found in this document'>"
)
FALLBACK_CHARS = 1500


def summary_messages(question: str, doc_id: str, title: str, pattern: str, passages: Sequence[str]) -> list[dict]:
    body = "\n\n".join(f"[{i + 1}] {p}" for i, p in enumerate(passages)) or "(no passage matched)"
    user = (f"Question: {question}\nLooking for: {pattern or '(anything relevant)'}\n"
            f"Document {doc_id}: {title}\n\nPassages:\n{body}")
    return [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": user}]


def summarize_document(backend, question: str, doc_id: str, title: str, pattern: str, passages: Sequence[str], *,
                       max_tokens: int = 256, temperature: float = 0.0, enable_thinking: bool | None = False):
    """(summary text, the backend's reply, the request messages). The summary is what `open` returns."""
    messages = summary_messages(question, doc_id, title, pattern, passages)
    reply = backend.chat(messages, tools=None, temperature=temperature, max_tokens=max_tokens,
                         enable_thinking=enable_thinking)
    text = (reply.content or "").strip()
    if not text:
        joined = "\n\n".join(passages)
        text = "Passages (the summarizer returned nothing):\n" + joined[:FALLBACK_CHARS]
    return text, reply, messages
