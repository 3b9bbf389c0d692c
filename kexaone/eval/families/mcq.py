"""Multiple choice: `{"question", "choices": [...], "answer": index, letter or choice text}`.

Two modes (EvalConfig.mcq_mode):
- `generate` (any backend): the question and lettered choices go to the chat model, which is asked to end with
  "Answer: X"; the letter is extracted (`extract_choice`) from "Answer: X", "The answer is (X)", "정답: X",
  "答え: X", "**X**", a bare letter, or the exact text of one choice. No letter found scores 0.
- `loglik` (backends with log-probs): context `EvalConfig.mcq_template` (default `"Question: {question}\\nAnswer:"`,
  `--mcq-template`), continuation `" " + choice` (lm-evaluation-harness's target delimiter); the
  pick is the choice with the highest summed log-prob (`acc`, as lm-evaluation-harness computes it); `acc_norm`
  (summed log-prob per UTF-8 byte of the choice) is reported beside it.
"""

from __future__ import annotations

import re
import string

from kexaone.eval.families.base import Family, load_items, reply_text, summarize_scores

LETTERS = string.ascii_uppercase

# Explicit answer statements, in several languages; the last one in the reply wins (models restate at the end).
_EXPLICIT = [
    r"answer\s*(?:is|:|=)?\s*(?:option|choice)?\s*[:\-]?\s*[\(\[\*]*\s*([A-Z])(?![A-Za-z0-9])",
    r"(?:correct|right|best)\s+(?:option|choice)\s+is\s*[:\-]?\s*[\(\[\*]*([A-Z])(?![A-Za-z0-9])",
    r"(?:option|choice)\s+[\(\[\*]*([A-Z])(?![A-Za-z0-9])\s+is\s+(?:correct|right)",
    r"정답\s*(?:은|는|:)?\s*[:\-]?\s*[\(\[\*]*\s*([A-Z])(?![A-Za-z0-9])",
    r"(?:答え|答案|正解)\s*(?:は|是|:|：)?\s*[\(\[\*]*\s*([A-Z])(?![A-Za-z0-9])",
    r"(?:respuesta|antwort|đáp án)\s*(?:es|ist|là|:)?\s*[:\-]?\s*[\(\[\*]*\s*([A-Z])(?![A-Za-z0-9])",
]
_EXPLICIT_RE = [re.compile(p, re.IGNORECASE) for p in _EXPLICIT]
_BARE_RE = re.compile(r"^\s*[\(\[\*]*\s*([A-Z])\s*[\)\]\*]*\s*(?:[.:)\-]|$)")
_BOLD_RE = re.compile(r"\*\*\s*\(?([A-Z])\)?\s*\*\*")


def extract_choice(text: str, n_choices: int, choices: list[str] | None = None) -> str | None:
    """The letter a reply picks among the first `n_choices` letters, or None."""
    valid = set(LETTERS[:n_choices])
    for rx in _EXPLICIT_RE:
        # "the answer is a ..." must not read the article as a letter: the letter must be a capital in the text.
        hits = [m.group(1) for m in rx.finditer(text) if m.group(1).isupper() and m.group(1) in valid]
        if hits:
            return hits[-1]
    bold = [m.group(1) for m in _BOLD_RE.finditer(text) if m.group(1) in valid]
    if bold:
        return bold[-1]
    m = _BARE_RE.match(text)
    if m and m.group(1) in valid:
        return m.group(1)
    if choices:
        t = text.strip().rstrip(".").strip().lower()
        for i, c in enumerate(choices):
            if t == str(c).strip().rstrip(".").lower():
                return LETTERS[i]
    return None


def gold_index(answer, choices: list, where: str) -> int:
    n = len(choices)
    if isinstance(answer, bool):
        raise ValueError(f"{where}: answer must be an index, a letter or a choice's text, got {answer!r}")
    if isinstance(answer, int):
        if not 0 <= answer < n:
            raise ValueError(f"{where}: answer index {answer} is outside 0..{n - 1}")
        return answer
    a = str(answer).strip()
    if len(a) == 1 and a.upper() in LETTERS[:n]:
        return LETTERS.index(a.upper())
    if a.isdigit() and 0 <= int(a) < n:
        return int(a)
    texts = [str(c).strip() for c in choices]
    if a in texts:
        return texts.index(a)
    raise ValueError(f"{where}: answer {answer!r} is not an index in 0..{n - 1}, a letter in "
                     f"{LETTERS[0]}..{LETTERS[n - 1]} or the text of a choice")


def mcq_prompt(question: str, choices: list[str]) -> str:
    lines = [question.strip(), ""]
    lines += [f"{LETTERS[i]}. {c}" for i, c in enumerate(choices)]
    lines += ["", "Answer with the letter of the correct choice. End your reply with \"Answer: X\" where X is the "
                  "letter."]
    return "\n".join(lines)


def loglik_context(question: str, template: str = "Question: {question}\nAnswer:") -> str:
    return template.replace("{question}", question)


class MCQ(Family):
    name = "mcq"
    fields = '{"question", "choices": [...], "answer": index | letter | choice text}'
    default_max_tokens = 256

    def load(self, rows, source):
        def make(row, where):
            choices = row["choices"]
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
                raise ValueError(f"{where}: choices must be a list of 2..26 strings, got {choices!r}")
            choices = [str(c) for c in choices]
            return {"question": str(row["question"]), "choices": choices,
                    "gold": gold_index(row["answer"], choices, where)}

        return load_items(rows, source, self.name, ("question", "choices", "answer"), make)

    def config_view(self, config):
        view = super().config_view(config) if config.mcq_mode == "generate" else {}
        return {**view, "mcq_mode": config.mcq_mode,
                "mcq_template": config.mcq_template if config.mcq_mode == "loglik" else None}

    def run(self, items, ctx):
        if ctx.config.mcq_mode == "loglik":
            return self._run_loglik(items, ctx)
        prompts = [mcq_prompt(it["question"], it["choices"]) for it in items]
        replies = ctx.backend.chat_batch([[{"role": "user", "content": p}] for p in prompts],
                                         **ctx.gen_kwargs(self.default_max_tokens))
        out = []
        for it, p, rep in zip(items, prompts, replies):
            text = reply_text(rep)
            pick = extract_choice(text, len(it["choices"]), it["choices"])
            gold = LETTERS[it["gold"]]
            out.append({"prompt": p, "response": text, "extracted": pick, "gold": gold,
                        "score": float(pick == gold)})
        return out

    def _run_loglik(self, items, ctx):
        pairs, spans = [], []
        for it in items:
            ctx_text = loglik_context(it["question"], ctx.config.mcq_template)
            spans.append((len(pairs), len(it["choices"])))
            pairs += [(ctx_text, " " + c) for c in it["choices"]]
        lls = ctx.backend.loglik(pairs)
        out = []
        for it, (at, k) in zip(items, spans):
            ll = lls[at:at + k]
            pick = max(range(k), key=ll.__getitem__)
            norm = [v / max(1, len((" " + c).encode("utf-8"))) for v, c in zip(ll, it["choices"])]
            pick_norm = max(range(k), key=norm.__getitem__)
            out.append({"prompt": loglik_context(it["question"], ctx.config.mcq_template), "response": None, "loglik": ll,
                        "extracted": LETTERS[pick], "gold": LETTERS[it["gold"]],
                        "score": float(pick == it["gold"]), "score_norm": float(pick_norm == it["gold"])})
        return out

    def summarize(self, records, ctx):
        if ctx.config.mcq_mode == "loglik":
            s = summarize_scores(records, "acc (summed log-likelihood)")
            s["acc_norm"] = summarize_scores(records, "", field="score_norm")["score"]
            return s
        s = summarize_scores(records, "accuracy (generated letter)")
        s["no_answer"] = sum(1 for r in records if r.get("extracted") is None)
        return s
