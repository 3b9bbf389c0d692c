"""kexaone: K-EXAONE in PyTorch (model, tokenizer, training recipe, inference, serving).

`KExaoneForCausalLM` is imported lazily so that `import kexaone` and config work stay torch-free and fast.
"""

from kexaone.config import KExaoneConfig

__version__ = "0.1.0"
__all__ = ["KExaoneConfig", "KExaoneForCausalLM", "__version__"]


def __getattr__(name: str):
    if name == "KExaoneForCausalLM":
        from kexaone.model.transformer import KExaoneForCausalLM

        return KExaoneForCausalLM
    raise AttributeError(f"module 'kexaone' has no attribute {name!r}")
