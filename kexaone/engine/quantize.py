"""Weight-only quantization of a model for generation, through torchao (an optional dependency: `kexaone[fp8]`).

`int8`: every `nn.Linear` (attention projections, the dense and shared-expert FFNs, the MTP layer's projections and
the output head) keeps its weight as int8 with one fp scale per output row; activations stay in the model's dtype.
The stacked routed experts (`GroupedExperts`, plain parameters read by grouped matmuls) and the router (fp32 by
design: near-tied scores must pick the same experts) are left as they are, as are embeddings and norms.

Generation only: a quantized model is not trained and is not saved back (`save_pretrained` would write torchao
tensors, not the `exaone_moe` layout).
"""

from __future__ import annotations

QUANTIZE_MODES = ("int8",)  # (no torch import at module level: the command line reads this at start-up)


def quantize_weights(model, mode: str) -> list[str]:
    """Quantize `model`'s nn.Linear weights in place (see the module); returns the names of the quantized modules."""
    from torch import nn

    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {QUANTIZE_MODES}, got {mode!r}")
    try:
        from torchao.quantization import Int8WeightOnlyConfig, quantize_
    except ImportError as e:
        raise ImportError(f"weight-only {mode} needs torchao: pip install 'kexaone[fp8]' ({e})") from None
    names = [name for name, m in model.named_modules() if type(m) is nn.Linear]
    if not names:
        raise ValueError("the model has no nn.Linear layers to quantize")
    model.requires_grad_(False)
    quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda m, fqn: type(m) is nn.Linear)
    return names
