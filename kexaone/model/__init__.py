"""kexaone.model: the K-EXAONE architecture (attention, KV cache, MoE, MTP, causal LM) and its HF-format I/O.

Names are imported lazily so that light submodules (e.g. `kexaone.model.info`, used by the CLI) do not pull in the
whole model on import.
"""

_LAZY = {
    "KExaoneForCausalLM": "kexaone.model.transformer",
    "KExaoneModel": "kexaone.model.transformer",
    "KExaoneOutput": "kexaone.model.outputs",
    "KVCache": "kexaone.model.cache",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'kexaone.model' has no attribute {name!r}")
