"""FP8 training (SPEC section 3: K-EXAONE was trained natively in FP8 with loss curves matching BF16).

Two modes, chosen by `apply_fp8(model, mode=...)`:

- "emulate" (any device, the CPU path): exact FP8 *numerics* without FP8 hardware. Every eligible matmul
  quantises its operands to FP8 with dynamic scaling, dequantises, and multiplies in the compute dtype (the autocast
  dtype, else the input's); in backward, the output gradient is quantised to float8_e5m2 before the input and
  weight gradients are formed. Gradients pass straight through the quantisers (d quant(x) / dx = 1), as in real FP8
  training where the cast is treated as the identity by autograd.
  Scaling (`scaling=`):
    "tensor" (default, torchao's "tensorwise"): one scale per tensor (per expert for stacked expert weights);
    "row" (torchao's "rowwise"): one scale per row along the contraction dimension (per output column of each
      expert for expert weights; per row of the output gradient).
  Scales are dynamic (from the current amax) and rounded down to powers of two, so a dequantised value is an FP8
  value times 2^k: exactly representable in bf16/fp32, and the emulated matmul sees exactly the FP8 operands.
- "torchao" (CUDA with FP8 tensor cores): `torchao.float8.convert_to_float8_training` on the eligible nn.Linear
  modules and torchao's FP8 grouped matmul (rowwise) for the experts. It needs CUDA; torchao is imported only here
  because importing it prints warnings on CPU-only machines.

Eligible: nn.Linear layers whose in and out features are both >= 16 (torchao mode: also divisible by 16), except
`lm_head`, embeddings and the MoE router (`*.gate`), which stay in high precision, as do norms (not matmuls);
MoE expert stacks (`GroupedExperts.fp8_recipe`). The parameters are untouched (same tensors, same names), so
optimizers, checkpoints and the Hugging Face export do not notice FP8. Not here: FP8 all-gather for FSDP, delayed
scaling, FP8 inference kernels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
SCALINGS = ("tensor", "row")
MODES = ("emulate", "torchao")
_AMAX_EPS = 1e-12  # an all-zero tensor gets a finite scale (its values quantise to 0 whatever the scale)
_EXCLUDED_NAMES = ("lm_head", "embed_tokens", "embed")


def fp8_dtype(fmt: str) -> torch.dtype:
    if fmt not in FP8_DTYPES:
        raise ValueError(f"FP8 format must be one of {sorted(FP8_DTYPES)}, got {fmt!r}")
    return FP8_DTYPES[fmt]


def quantize(x: torch.Tensor, fmt: str = "e4m3", amax_dims: tuple[int, ...] | None = None,
             pow2_scale: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Quantise `x` to FP8 with dynamic scaling. Returns (q in the FP8 dtype, inv_scale fp32) with
    x ~= q.float() * inv_scale.

    `amax_dims`: dims reduced to find each scale's amax (None: the whole tensor, one scale). The scale maps the
    amax to at most the format's max (448 for e4m3, 57344 for e5m2); with `pow2_scale` it is rounded down to a
    power of two. Non-finite inputs stay non-finite (they mean a diverged step the trainer must see)."""
    dtype = fp8_dtype(fmt)
    fmax = torch.finfo(dtype).max
    xf = x.float()
    if amax_dims is None:
        amax = xf.abs().amax()
    else:
        amax = xf.abs().amax(dim=amax_dims, keepdim=True)
    scale = fmax / amax.clamp(min=_AMAX_EPS)
    if pow2_scale:
        scale = torch.exp2(torch.floor(torch.log2(scale)))
    q = (xf * scale).clamp(-fmax, fmax).to(dtype)
    return q, scale.reciprocal()


def dequantize(q: torch.Tensor, inv_scale: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    return (q.float() * inv_scale).to(dtype)


def quantize_dequantize(x: torch.Tensor, fmt: str = "e4m3", amax_dims: tuple[int, ...] | None = None,
                        pow2_scale: bool = True) -> torch.Tensor:
    """`x` rounded to the nearest FP8-representable value under dynamic scaling, in x's dtype (no autograd)."""
    q, inv_scale = quantize(x, fmt, amax_dims, pow2_scale)
    return dequantize(q, inv_scale, x.dtype)


class _QuantSTE(torch.autograd.Function):
    """Forward: quantise-dequantise. Backward: identity (straight-through), as an FP8 cast is for autograd."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, fmt: str, amax_dims: tuple[int, ...] | None,
                pow2_scale: bool) -> torch.Tensor:
        return quantize_dequantize(x, fmt, amax_dims, pow2_scale)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return grad, None, None, None


class _QuantGrad(torch.autograd.Function):
    """Forward: identity. Backward: quantise-dequantise the incoming gradient (to e5m2 in the usual recipe), so
    every gradient matmul downstream of it consumes FP8 values."""

    @staticmethod
    def forward(ctx: Any, y: torch.Tensor, fmt: str, amax_dims: tuple[int, ...] | None,
                pow2_scale: bool) -> torch.Tensor:
        ctx.fmt, ctx.amax_dims, ctx.pow2_scale = fmt, amax_dims, pow2_scale
        return y.view_as(y)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor):
        return quantize_dequantize(grad, ctx.fmt, ctx.amax_dims, ctx.pow2_scale), None, None, None


def fake_quant(x: torch.Tensor, fmt: str, amax_dims: tuple[int, ...] | None, pow2_scale: bool = True) -> torch.Tensor:
    return _QuantSTE.apply(x, fmt, amax_dims, pow2_scale)


def quant_grad(y: torch.Tensor, fmt: str, amax_dims: tuple[int, ...] | None, pow2_scale: bool = True) -> torch.Tensor:
    return _QuantGrad.apply(y, fmt, amax_dims, pow2_scale)


@dataclass(frozen=True)
class Float8Recipe:
    """What an emulated FP8 matmul does: forward operands in `fmt`, output gradient in `grad_fmt`, scaling
    "tensor" or "row" (see the module docstring), power-of-two scales."""

    fmt: str = "e4m3"
    grad_fmt: str = "e5m2"
    scaling: str = "tensor"
    pow2_scale: bool = True

    def __post_init__(self) -> None:
        fp8_dtype(self.fmt)
        fp8_dtype(self.grad_fmt)
        if self.scaling not in SCALINGS:
            raise ValueError(f"FP8 scaling must be one of {SCALINGS}, got {self.scaling!r}")

    def _dims(self, row_dims: tuple[int, ...], tensor_dims: tuple[int, ...] | None) -> tuple[int, ...] | None:
        return row_dims if self.scaling == "row" else tensor_dims

    def linear(self, x_MK: torch.Tensor, w_NK: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        """F.linear under FP8 emulation; x may have any leading dims ([..., K])."""
        xq = fake_quant(x_MK, self.fmt, self._dims((-1,), None), self.pow2_scale)
        wq = fake_quant(w_NK, self.fmt, self._dims((-1,), None), self.pow2_scale)
        y = F.linear(xq, wq, bias)
        return quant_grad(y, self.grad_fmt, self._dims((-1,), None), self.pow2_scale)

    def matmul(self, a_MK: torch.Tensor, w_KN: torch.Tensor) -> torch.Tensor:
        """a @ w under FP8 emulation (a scaled per row, w per column in "row" scaling)."""
        aq = fake_quant(a_MK, self.fmt, self._dims((-1,), None), self.pow2_scale)
        wq = fake_quant(w_KN, self.fmt, self._dims((-2,), None), self.pow2_scale)
        return quant_grad(aq @ wq, self.grad_fmt, self._dims((-1,), None), self.pow2_scale)

    def grouped_mm(self, x_MK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
        """`kexaone.model.moe.grouped_mm` under FP8 emulation: rows of x sorted by expert, `offs_E` the cumulative
        row counts; expert weights get their own scales (one per expert, or one per output column of each expert
        in "row" scaling), so one large expert cannot crush the others' precision."""
        from kexaone.model.moe import grouped_mm

        xq = fake_quant(x_MK, self.fmt, self._dims((-1,), None), self.pow2_scale)
        wq = fake_quant(w_EKN, self.fmt, self._dims((1,), (1, 2)), self.pow2_scale)
        y = grouped_mm(xq, wq, offs_E)
        return quant_grad(y, self.grad_fmt, self._dims((-1,), None), self.pow2_scale)


class TorchaoGroupedRecipe:
    """Expert matmuls through torchao's FP8 rowwise grouped GEMM (CUDA, compute capability >= 9.0)."""

    def __init__(self) -> None:
        from torchao.prototype.moe_training.fp8_grouped_mm import _to_fp8_rowwise_then_scaled_grouped_mm

        self._gmm = _to_fp8_rowwise_then_scaled_grouped_mm

    def grouped_mm(self, x_MK: torch.Tensor, w_EKN: torch.Tensor, offs_E: torch.Tensor) -> torch.Tensor:
        return self._gmm(x_MK, w_EKN, offs_E, out_dtype=x_MK.dtype)


class Float8Linear(nn.Linear):
    """nn.Linear whose matmul runs under FP8 emulation (`recipe`). Holds the very same Parameter objects as the
    layer it replaced, so state_dict keys, optimizer state and tied weights are unchanged."""

    recipe: Float8Recipe

    @classmethod
    def from_linear(cls, linear: nn.Linear, recipe: Float8Recipe) -> "Float8Linear":
        with torch.device("meta"):
            new = cls(linear.in_features, linear.out_features, bias=linear.bias is not None)
        new.weight = linear.weight
        new.bias = linear.bias
        new.train(linear.training)
        new.recipe = recipe
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.recipe.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, fp8={self.recipe.fmt}/{self.recipe.grad_fmt}, scaling={self.recipe.scaling}"


def default_fp8_filter(name: str, module: nn.Module, min_dim: int = 16) -> bool:
    """K-EXAONE's rule: lm_head, embeddings, the router and layers with a dimension < min_dim stay in high
    precision (their matmuls are cheap and their precision matters)."""
    parts = name.split(".")
    if any(p in _EXCLUDED_NAMES for p in parts) or (parts and parts[-1] == "gate"):
        return False
    if isinstance(module, nn.Linear):
        return min(module.in_features, module.out_features) >= min_dim
    if _is_grouped_experts(module):
        return min(module.gate_up_proj.shape[-1], module.down_proj.shape[-1]) >= min_dim
    return False


def _is_grouped_experts(module: nn.Module) -> bool:
    return hasattr(module, "fp8_recipe") and hasattr(module, "gate_up_proj") and hasattr(module, "down_proj")


def apply_fp8(model: nn.Module, mode: str = "emulate", fmt: str = "e4m3", scaling: str = "tensor",
              grad_fmt: str = "e5m2", min_dim: int = 16,
              module_filter_fn: Callable[[str, nn.Module], bool] | None = None) -> nn.Module:
    """Switch `model` (in place) to FP8 training and return it.

    mode "emulate": eligible nn.Linear become `Float8Linear`, expert stacks get a `Float8Recipe` as `fp8_recipe`.
    mode "torchao": torchao float8 training ("tensor" -> tensorwise, "row" -> rowwise recipe); needs CUDA.
    `module_filter_fn(name, module) -> bool` further restricts which modules convert (default: all eligible).
    """
    if mode not in MODES:
        raise ValueError(f"FP8 mode must be one of {MODES}, got {mode!r}")
    recipe = Float8Recipe(fmt=fmt, grad_fmt=grad_fmt, scaling=scaling)

    def eligible(name: str, module: nn.Module) -> bool:
        if not default_fp8_filter(name, module, min_dim):
            return False
        if mode == "torchao" and isinstance(module, nn.Linear):
            # FP8 tensor-core GEMMs need both dimensions to be multiples of 16.
            if module.in_features % 16 or module.out_features % 16:
                return False
        return module_filter_fn is None or module_filter_fn(name, module)

    if mode == "torchao":
        return _apply_torchao(model, eligible, recipe)

    for name, module in list(model.named_modules()):
        if _is_grouped_experts(module) and eligible(name, module):
            module.fp8_recipe = recipe
    swaps = [(name, m) for name, m in model.named_modules()
             if type(m) is nn.Linear and eligible(name, m)]
    for name, linear in swaps:
        _set_submodule(model, name, Float8Linear.from_linear(linear, recipe))
    return model


def _apply_torchao(model: nn.Module, eligible: Callable[[str, nn.Module], bool], recipe: Float8Recipe) -> nn.Module:
    if not torch.cuda.is_available():
        raise RuntimeError("apply_fp8(mode='torchao') needs a CUDA GPU with FP8 support (compute capability >= 8.9); "
                           "none is available here. Use mode='emulate' to train with FP8 numerics on CPU.")
    major, minor = torch.cuda.get_device_capability()
    if (major, minor) < (8, 9):
        raise RuntimeError(f"apply_fp8(mode='torchao') needs compute capability >= 8.9 for FP8 matmuls, "
                           f"this GPU has {major}.{minor}; use mode='emulate'")
    if recipe.fmt != "e4m3" or recipe.grad_fmt != "e5m2":
        raise ValueError("mode='torchao' implements the e4m3 forward / e5m2 gradient recipe only, "
                         f"got fmt={recipe.fmt!r}, grad_fmt={recipe.grad_fmt!r}")
    try:
        from torchao.float8 import Float8LinearConfig, convert_to_float8_training
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise RuntimeError("apply_fp8(mode='torchao') needs the `torchao` package: pip install torchao") from e

    config = Float8LinearConfig.from_recipe_name("tensorwise" if recipe.scaling == "tensor" else "rowwise")
    convert_to_float8_training(model, config=config, module_filter_fn=lambda m, fqn: eligible(fqn, m))
    experts = [(name, m) for name, m in model.named_modules() if _is_grouped_experts(m) and eligible(name, m)]
    if experts:
        if major < 9:
            raise RuntimeError(f"torchao's FP8 grouped GEMM for the experts needs compute capability >= 9.0, this GPU "
                               f"has {major}.{minor}; pass module_filter_fn to keep experts in bf16")
        grouped = TorchaoGroupedRecipe()
        for _, m in experts:
            m.fp8_recipe = grouped
    return model


def _set_submodule(root: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, leaf = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, leaf, new)


def fp8_module_names(model: nn.Module) -> list[str]:
    """Names of the modules running in FP8 (emulated linears and expert stacks with a recipe), for logging."""
    names = []
    for name, m in model.named_modules():
        if isinstance(m, Float8Linear) or (_is_grouped_experts(m) and m.fp8_recipe is not None):
            names.append(name)
        elif type(m).__name__ == "Float8Linear":  # torchao's class
            names.append(name)
    return names


_MANTISSA_BITS = {"e4m3": 3, "e5m2": 2}


def relative_error_bound(fmt: str) -> float:
    """Largest relative rounding error of a value in the format's normal range: half an ulp, 2^-(mantissa+1)
    (e4m3: 2^-4 = 6.25%, e5m2: 2^-3 = 12.5%)."""
    fp8_dtype(fmt)
    return 2.0 ** -(_MANTISSA_BITS[fmt] + 1)


def subnormal_half_step(fmt: str) -> float:
    """Half the spacing of the format's subnormals (absolute error bound below the normal range, before scaling):
    e4m3fn 2^-10, e5m2 2^-17."""
    fi = torch.finfo(fp8_dtype(fmt))
    return fi.smallest_normal * 2.0 ** -_MANTISSA_BITS[fmt] / 2
