"""KExaoneConfig: every architecture and balancing field of K-EXAONE, presets, validation, and the
mapping to and from the Hugging Face `config.json` of model type `exaone_moe`.

This module holds no tensors and imports no torch, so configs can be built, validated and counted cheaply.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

SLIDING = "sliding_attention"
GLOBAL = "full_attention"
DENSE = "dense"
SPARSE = "sparse"
LAYER_TYPES = (SLIDING, GLOBAL)
MLP_LAYER_TYPES = (DENSE, SPARSE)


def layer_types_from_pattern(pattern: str | int, num_layers: int) -> list[str]:
    """Expand a sliding/global pattern into per-layer types.

    A string such as "LLLG" repeats from layer 0 and the final layer is always global (K-EXAONE, 48 layers:
    36 sliding + 12 global). An int p follows `transformers` exactly: layer i is global iff (i + 1) % p == 0.
    """
    if isinstance(pattern, int) and not isinstance(pattern, bool):
        if pattern < 1:
            raise ValueError(f"sliding_window_pattern must be >= 1 when an int, got {pattern}")
        return [SLIDING if (i + 1) % pattern != 0 else GLOBAL for i in range(num_layers)]
    if not isinstance(pattern, str) or not pattern or set(pattern.upper()) - {"L", "G"}:
        raise ValueError(f"sliding_window_pattern must be an int or a string of 'L'/'G' characters, got {pattern!r}")
    pattern = pattern.upper()
    types = [SLIDING if pattern[i % len(pattern)] == "L" else GLOBAL for i in range(num_layers)]
    if num_layers:
        types[-1] = GLOBAL
    return types


@dataclass
class KExaoneConfig:
    """Architecture of a K-EXAONE model (SPEC section 1), plus the balancing and loss coefficients of its
    pre-training recipe (SPEC section 3). Field names follow the Hugging Face `exaone_moe` config where one exists.
    """

    # --- sizes ---
    vocab_size: int = 153_600
    """Number of token ids (embedding rows and lm_head outputs), special tokens included."""
    hidden_size: int = 6144
    """Model width H."""
    num_hidden_layers: int = 48
    """Decoder layers in the main stack (the MTP layers are counted separately)."""
    num_attention_heads: int = 64
    """Query heads per attention layer."""
    num_key_value_heads: int = 8
    """Key/value heads (GQA); must divide num_attention_heads."""
    head_dim: int = 128
    """Width of one attention head (q/k/v); independent of hidden_size / heads."""
    intermediate_size: int = 18_432
    """SwiGLU width of the dense FFN (layer 0 and the MTP layer)."""
    moe_intermediate_size: int = 2048
    """SwiGLU width of each routed expert (the shared expert has moe_intermediate_size * num_shared_experts)."""

    # --- mixture of experts ---
    num_experts: int = 128
    """Routed experts per sparse layer."""
    num_experts_per_tok: int = 8
    """Routed experts chosen per token (top-k)."""
    num_shared_experts: int = 1
    """Always-active shared experts, fused into one SwiGLU of width moe_intermediate_size * num_shared_experts."""
    norm_topk_prob: bool = True
    """Normalise the chosen experts' sigmoid scores to sum 1 before scaling."""
    routed_scaling_factor: float = 2.5
    """Multiplier on the (normalised) gate weights of the routed experts."""
    n_group: int = 1
    """Expert groups for group-limited routing; must divide num_experts. 1 disables the group limit."""
    topk_group: int = 1
    """Groups a token may route into (group score = sum of its top-2 biased scores); <= n_group."""

    # --- attention layout ---
    sliding_window: int | None = 128
    """Keys a sliding-window query sees, itself included. None: every layer global, RoPE everywhere (HF rule)."""
    sliding_window_pattern: str | int = "LLLG"
    """Pattern used to derive layer_types when they are not given (see layer_types_from_pattern)."""
    layer_types: list[str] | None = None
    """Per-layer attention type, 'sliding_attention' (RoPE, windowed) or 'full_attention' (NoPE, global)."""
    mlp_layer_types: list[str] | None = None
    """Per-layer FFN type, 'dense' or 'sparse'. Derived from first_k_dense_replace when not given."""
    first_k_dense_replace: int = 1
    """Leading layers with a dense FFN (K-EXAONE: layer 0, for training stability)."""

    # --- positions and norms ---
    rope_parameters: dict[str, Any] = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 1_000_000.0})
    """RoPE settings as in transformers 5 (`rope_type`, `rope_theta`, ...). [rope_theta unverified for K-EXAONE]"""
    max_position_embeddings: int = 262_144
    """Longest context the model is configured for (K-EXAONE: 256K)."""
    rms_norm_eps: float = 1e-5
    """Epsilon of every RMSNorm (block norms, QK-norm, final norm, MTP norms)."""
    tie_word_embeddings: bool = False
    """Share the input embedding with lm_head (K-EXAONE: untied)."""
    initializer_range: float = 0.02
    """Standard deviation of the normal initialisation of linear and embedding weights."""

    # --- multi-token prediction ---
    num_nextn_predict_layers: int = 1
    """MTP blocks (K-EXAONE: one dense layer predicting token t+2). 0 disables MTP."""

    # --- special token ids ---
    bos_token_id: int | None = 1
    """Beginning-of-sequence id, if the tokenizer has one."""
    eos_token_id: int | list[int] | None = 53
    """End-of-sequence / end-of-turn id(s) used to stop generation."""
    pad_token_id: int | None = 0
    """Padding id (embedding row kept, never predicted)."""

    # --- training-recipe coefficients (not part of the HF architecture, saved under a `kexaone` key) ---
    aux_loss_coef: float = 1e-4
    """Weight of the sequence-level MoE auxiliary balance loss in the total loss."""
    bias_update_rate: float = 1e-4
    """Step size of the aux-loss-free expert-bias update, applied after every optimizer step."""
    mtp_loss_weight: float = 0.05
    """Weight of the MTP cross-entropy in the total loss."""

    # --- ablation switches (K-EXAONE's values are the defaults; saved under the `kexaone` key, not HF fields) ---
    qk_norm: bool = True
    """RMSNorm on each query and key head before RoPE (K-EXAONE: on). Off keeps the norm weights but skips them."""
    global_rope: bool = False
    """RoPE on the global layers too (K-EXAONE: NoPE on global layers, RoPE on sliding ones)."""
    moe_capacity_factor: float | None = None
    """None: dropless routing (K-EXAONE). A float c: each expert takes at most ceil(c x pairs / experts) (token,
    slot) pairs of a forward, in token order; the rest are dropped (their gate weight set to 0)."""

    def __post_init__(self) -> None:
        if self.layer_types is None:
            if self.sliding_window is None:
                self.layer_types = [GLOBAL] * self.num_hidden_layers
            else:
                self.layer_types = layer_types_from_pattern(self.sliding_window_pattern, self.num_hidden_layers)
        else:
            self.layer_types = list(self.layer_types)
        if self.mlp_layer_types is None:
            self.mlp_layer_types = [DENSE if i < self.first_k_dense_replace else SPARSE
                                    for i in range(self.num_hidden_layers)]
        else:
            self.mlp_layer_types = list(self.mlp_layer_types)
        self.rope_parameters = dict(self.rope_parameters)
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError naming the first bad field and what would be valid."""

        def need(ok: bool, name: str, allowed: str) -> None:
            if not ok:
                raise ValueError(f"KExaoneConfig.{name} = {getattr(self, name)!r} is invalid: {allowed}")

        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                     "head_dim", "intermediate_size", "moe_intermediate_size", "num_experts", "num_experts_per_tok",
                     "n_group", "topk_group", "max_position_embeddings"):
            v = getattr(self, name)
            need(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, "must be an integer >= 1")
        need(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
             f"must divide num_attention_heads ({self.num_attention_heads})")
        need(self.num_experts_per_tok <= self.num_experts, "num_experts_per_tok",
             f"must be <= num_experts ({self.num_experts})")
        need(self.num_experts % self.n_group == 0, "n_group", f"must divide num_experts ({self.num_experts})")
        need(self.topk_group <= self.n_group, "topk_group", f"must be <= n_group ({self.n_group})")
        per_group = self.num_experts // self.n_group
        need(self.n_group == 1 or per_group >= 2, "n_group",
             "must leave at least 2 experts per group (group score = sum of the group's top-2)")
        need(self.n_group == 1 or self.topk_group * per_group >= self.num_experts_per_tok, "topk_group",
             f"topk_group x experts per group ({per_group}) must be >= num_experts_per_tok "
             f"({self.num_experts_per_tok})")
        need(isinstance(self.num_shared_experts, int) and self.num_shared_experts >= 0, "num_shared_experts",
             "must be an integer >= 0")
        need(self.sliding_window is None or (isinstance(self.sliding_window, int) and self.sliding_window >= 1),
             "sliding_window", "must be an integer >= 1, or None for an all-global model")
        need(len(self.layer_types) == self.num_hidden_layers, "layer_types",
             f"must have one entry per layer ({self.num_hidden_layers}), got {len(self.layer_types)}")
        bad = [t for t in self.layer_types if t not in LAYER_TYPES]
        need(not bad, "layer_types", f"entries must be one of {LAYER_TYPES}, got {bad[:3]}")
        need(self.sliding_window is not None or SLIDING not in self.layer_types, "layer_types",
             "sliding_attention layers need a sliding_window")
        need(len(self.mlp_layer_types) == self.num_hidden_layers, "mlp_layer_types",
             f"must have one entry per layer ({self.num_hidden_layers}), got {len(self.mlp_layer_types)}")
        bad = [t for t in self.mlp_layer_types if t not in MLP_LAYER_TYPES]
        need(not bad, "mlp_layer_types", f"entries must be one of {MLP_LAYER_TYPES}, got {bad[:3]}")
        need(isinstance(self.rope_parameters, dict) and "rope_theta" in self.rope_parameters, "rope_parameters",
             "must be a dict with at least 'rope_theta' (and 'rope_type', default 'default')")
        need(self.head_dim % 2 == 0, "head_dim", "must be even (RoPE rotates pairs)")
        need(self.rms_norm_eps > 0, "rms_norm_eps", "must be > 0")
        need(self.routed_scaling_factor > 0, "routed_scaling_factor", "must be > 0")
        need(isinstance(self.num_nextn_predict_layers, int) and self.num_nextn_predict_layers in (0, 1),
             "num_nextn_predict_layers", "must be 0 or 1 (K-EXAONE has one MTP layer)")
        for name in ("aux_loss_coef", "bias_update_rate", "mtp_loss_weight"):
            need(getattr(self, name) >= 0, name, "must be >= 0")
        need(self.moe_capacity_factor is None or (isinstance(self.moe_capacity_factor, (int, float))
                                                  and self.moe_capacity_factor > 0),
             "moe_capacity_factor", "must be None (dropless) or a number > 0")

    # ------------------------------------------------------------------ derived
    @property
    def num_key_value_groups(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def rope_theta(self) -> float:
        return float(self.rope_parameters["rope_theta"])

    def is_sliding(self, layer_idx: int) -> bool:
        return self.layer_types[layer_idx] == SLIDING

    def uses_rope(self, layer_idx: int) -> bool:
        """RoPE on sliding layers only (all layers with `global_rope`); with no sliding window at all, RoPE
        everywhere (transformers' rule)."""
        return self.sliding_window is None or self.global_rope or self.is_sliding(layer_idx)

    def is_sparse(self, layer_idx: int) -> bool:
        return self.mlp_layer_types[layer_idx] == SPARSE

    def replace(self, **changes: Any) -> "KExaoneConfig":
        """A validated copy with some fields changed. Derived per-layer lists are re-derived when the layer count
        or pattern changes and they were not given explicitly."""
        d = dataclasses.asdict(self)
        if any(k in changes for k in ("num_hidden_layers", "sliding_window_pattern", "sliding_window")):
            if "layer_types" not in changes:
                d["layer_types"] = None
        if any(k in changes for k in ("num_hidden_layers", "first_k_dense_replace")) and "mlp_layer_types" not in changes:
            d["mlp_layer_types"] = None
        d.update(changes)
        return KExaoneConfig(**d)

    # ------------------------------------------------------------------ presets
    @classmethod
    def preset(cls, name: str) -> "KExaoneConfig":
        """Named configurations: 'tiny' (CI), 'small' (what the CPU pipeline trains), 'k-exaone-236b-a23b'."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(**copy.deepcopy(PRESETS[name]))

    @staticmethod
    def preset_names() -> list[str]:
        return sorted(PRESETS)

    # ------------------------------------------------------------------ HF config.json
    def to_hf_dict(self) -> dict[str, Any]:
        """The `config.json` dict that transformers' ExaoneMoeConfig (and vLLM / SGLang) read."""
        d: dict[str, Any] = {
            "architectures": ["ExaoneMoeForCausalLM"],
            "model_type": "exaone_moe",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "moe_intermediate_size": self.moe_intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "num_experts": self.num_experts,
            "num_experts_per_tok": self.num_experts_per_tok,
            "num_shared_experts": self.num_shared_experts,
            "norm_topk_prob": self.norm_topk_prob,
            "routed_scaling_factor": self.routed_scaling_factor,
            "n_group": self.n_group,
            "topk_group": self.topk_group,
            "sliding_window": self.sliding_window,
            "sliding_window_pattern": self.sliding_window_pattern,
            "layer_types": list(self.layer_types),
            "mlp_layer_types": list(self.mlp_layer_types),
            "first_k_dense_replace": self.first_k_dense_replace,
            "rope_parameters": dict(self.rope_parameters),
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "tie_word_embeddings": self.tie_word_embeddings,
            "initializer_range": self.initializer_range,
            "num_nextn_predict_layers": self.num_nextn_predict_layers,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "pad_token_id": self.pad_token_id,
            "attention_dropout": 0.0,
            "use_cache": True,
            "kexaone": {
                "aux_loss_coef": self.aux_loss_coef,
                "bias_update_rate": self.bias_update_rate,
                "mtp_loss_weight": self.mtp_loss_weight,
                "qk_norm": self.qk_norm,
                "global_rope": self.global_rope,
                "moe_capacity_factor": self.moe_capacity_factor,
            },
        }
        return d

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "KExaoneConfig":
        """Build from a `config.json` dict of model type `exaone_moe` (written by kexaone, transformers or a
        released checkpoint). Unknown keys are ignored; a wrong model_type is an error."""
        if not isinstance(d, dict):
            raise ValueError(f"config must be a JSON object, got {type(d).__name__}")
        model_type = d.get("model_type", "exaone_moe")
        if model_type != "exaone_moe":
            raise ValueError(f"config.json has model_type {model_type!r}; kexaone reads 'exaone_moe' checkpoints")
        names = {f.name for f in dataclasses.fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        kw.update({k: v for k, v in (d.get("kexaone") or {}).items() if k in names})
        if "rope_parameters" not in d:
            # transformers 4.x wrote rope_theta (and rope_scaling) at the top level.
            rope = dict(d.get("rope_scaling") or {})
            rope.setdefault("rope_type", rope.pop("type", "default"))
            rope["rope_theta"] = d.get("rope_theta", 10_000.0)
            kw["rope_parameters"] = rope
        if "layer_types" not in d and d.get("sliding_window") is not None:
            # transformers' own derivation for configs that only give the pattern.
            kw["layer_types"] = layer_types_from_pattern(d.get("sliding_window_pattern", 4), kw["num_hidden_layers"])
        if d.get("sliding_window") is None and "sliding_window" in d:
            kw["layer_types"] = [GLOBAL] * kw["num_hidden_layers"]
        if "num_hidden_layers" not in kw:
            raise ValueError("config.json is missing 'num_hidden_layers'")
        if "mlp_layer_types" not in d:
            kw["first_k_dense_replace"] = d.get("first_k_dense_replace", 1)
        kw.setdefault("num_nextn_predict_layers", d.get("num_nextn_predict_layers", 0))
        return cls(**kw)

    def save_json(self, path: str | os.PathLike) -> None:
        """Write config.json atomically."""
        from kexaone.utils.io import atomic_write_text

        atomic_write_text(path, json.dumps(self.to_hf_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def from_json_file(cls, path: str | os.PathLike) -> "KExaoneConfig":
        try:
            with open(path, encoding="utf-8") as f:
                d = json.load(f)
        except FileNotFoundError:
            raise FileNotFoundError(f"no config.json at {path}") from None
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not valid JSON: {e}") from None
        return cls.from_hf_dict(d)


PRESETS: dict[str, dict[str, Any]] = {
    # CI-sized: every mechanism present (hybrid attention with a short window, dense layer 0, MoE with groups,
    # shared expert, MTP), small enough that a forward+backward takes milliseconds.
    "tiny": dict(
        vocab_size=2048, hidden_size=64, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, intermediate_size=192, moe_intermediate_size=32, num_experts=8, num_experts_per_tok=2,
        num_shared_experts=1, n_group=2, topk_group=2, sliding_window=16, sliding_window_pattern="LLLG",
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, max_position_embeddings=4096,
        num_nextn_predict_layers=1, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    ),
    # What the CPU speedrun trains: ~29M parameters, 32 experts top-2 + 1 shared, 8 layers LLLG LLLG, window 128.
    "small": dict(
        vocab_size=8192, hidden_size=256, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=2,
        head_dim=32, intermediate_size=768, moe_intermediate_size=128, num_experts=32, num_experts_per_tok=2,
        num_shared_experts=1, n_group=1, topk_group=1, sliding_window=128, sliding_window_pattern="LLLG",
        rope_parameters={"rope_type": "default", "rope_theta": 10_000.0}, max_position_embeddings=65_536,
        num_nextn_predict_layers=1, bos_token_id=None, eos_token_id=None, pad_token_id=0,
    ),
    # The released architecture (SPEC section 1).
    "k-exaone-236b-a23b": dict(
        vocab_size=153_600, hidden_size=6144, num_hidden_layers=48, num_attention_heads=64, num_key_value_heads=8,
        head_dim=128, intermediate_size=18_432, moe_intermediate_size=2048, num_experts=128, num_experts_per_tok=8,
        num_shared_experts=1, norm_topk_prob=True, routed_scaling_factor=2.5, n_group=1, topk_group=1,
        sliding_window=128, sliding_window_pattern="LLLG", first_k_dense_replace=1,
        rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0}, max_position_embeddings=262_144,
        rms_norm_eps=1e-5, tie_word_embeddings=False, num_nextn_predict_layers=1,
    ),
}
