"""kexaone.engine: generation (batched, streamed, MTP self-speculative), the chat loop, and the OpenAI-compatible
server.

`from kexaone.engine import Engine` is the entry point; names are imported lazily so that the CLI modules of this
package (`kexaone generate`, `chat`, `serve`) can be imported without torch.
"""

from __future__ import annotations

_EXPORTS = {
    "Engine": "kexaone.engine.engine",
    "DecodeBatch": "kexaone.engine.engine",
    "TokenScores": "kexaone.engine.engine",
    "SamplingParams": "kexaone.engine.sampling",
    "GenerationResult": "kexaone.engine.sequence",
    "GenerationStats": "kexaone.engine.sequence",
    "ChatResult": "kexaone.engine.chat_io",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'kexaone.engine' has no attribute {name!r}")
