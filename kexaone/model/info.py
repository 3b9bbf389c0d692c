"""Analytic size and cost of a K-EXAONE configuration, and the `kexaone info` command.

Everything is computed from the config alone (no tensors), so the 236B configuration is counted instantly:
parameters (total, active per token, MTP, and by component), KV-cache bytes per token of context, and forward
FLOPs per token. The counts equal what `KExaoneForCausalLM` builds (a test checks this on the meta device).

Conventions:
- Parameters are the trainable tensors (`nn.Parameter`s). The router correction biases are buffers, reported
  apart (`router_bias_buffers`), as transformers does. A tied lm_head counts once.
- Active parameters per token: every parameter of the main model except the routed experts a token does not use
  (num_experts - num_experts_per_tok per MoE layer), embeddings and lm_head included, MTP excluded (the convention
  behind names such as "A23B").
- FLOPs per token (forward): 2 x the active parameters that take part in a matmul (everything but the embedding
  lookup and the norms, lm_head included) + attention: 2 x 2 x heads x head_dim per (query, key) pair for QK^T and
  AV, with the number of keys a query sees under causal masking averaged over the positions of a sequence of
  `seq_len` tokens: (seq_len+1)/2 on global layers, the mean of min(position+1, window) on sliding layers.
  Element-wise work (norms, activations, softmax, routing top-k) is ignored. Training is about 3x this.
- KV cache: bytes added per token of context. Only global layers grow; sliding layers hold a constant window
  (`kv_cache_bytes(config, context_len)` gives the whole cache at a given length).

Not here: measured numbers (see benchmarks/), the model itself (`transformer.py`).
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from kexaone.config import KExaoneConfig

HELP = "Parameter counts, KV-cache bytes per token and FLOPs per token of a K-EXAONE configuration."


# --------------------------------------------------------------------------------------------------- parameters
def _attention_params(c: KExaoneConfig) -> int:
    q = c.hidden_size * c.num_attention_heads * c.head_dim
    kv = 2 * c.hidden_size * c.num_key_value_heads * c.head_dim
    o = c.num_attention_heads * c.head_dim * c.hidden_size
    qk_norm = 2 * c.head_dim
    return q + kv + o + qk_norm


def _swiglu_params(hidden: int, intermediate: int) -> int:
    return 3 * hidden * intermediate


def count_parameters(config: KExaoneConfig) -> dict[str, int]:
    """Analytic parameter counts of `KExaoneForCausalLM(config)`.

    Keys: total (main model + MTP), main, active (per token, see module doc), active_non_embedding, mtp,
    embedding (input embedding + lm_head, once when tied), attention, routed_experts, active_routed_experts,
    shared_experts, dense_mlp, router, norms (main model), router_bias_buffers (not parameters)."""
    c = config
    h = c.hidden_size
    n_sparse = sum(1 for i in range(c.num_hidden_layers) if c.is_sparse(i))
    n_dense = c.num_hidden_layers - n_sparse

    embedding = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    attention = c.num_hidden_layers * _attention_params(c)
    one_expert = _swiglu_params(h, c.moe_intermediate_size)
    routed = n_sparse * c.num_experts * one_expert
    active_routed = n_sparse * c.num_experts_per_tok * one_expert
    shared = n_sparse * _swiglu_params(h, c.moe_intermediate_size * c.num_shared_experts)
    dense = n_dense * _swiglu_params(h, c.intermediate_size)
    router = n_sparse * c.num_experts * h
    norms = c.num_hidden_layers * 2 * h + h  # input/post-attention norms per layer + final norm
    main = embedding + attention + routed + shared + dense + router + norms

    mtp = 0
    if c.num_nextn_predict_layers:
        # fc (2H -> H), two pre-fc norms, one decoder layer with a dense SwiGLU, final norm; embedding and
        # lm_head are shared with the main model.
        mtp_layer = _attention_params(c) + 2 * h + _swiglu_params(h, c.intermediate_size)
        mtp = c.num_nextn_predict_layers * (2 * h * h + 2 * h + mtp_layer + h)

    active = main - (routed - active_routed)
    return {
        "total": main + mtp,
        "main": main,
        "active": active,
        "active_non_embedding": active - embedding,
        "mtp": mtp,
        "embedding": embedding,
        "attention": attention,
        "routed_experts": routed,
        "active_routed_experts": active_routed,
        "shared_experts": shared,
        "dense_mlp": dense,
        "router": router,
        "norms": norms,
        "router_bias_buffers": n_sparse * c.num_experts,
    }


# ----------------------------------------------------------------------------------------------------- KV cache
def _kv_bytes_per_layer_token(c: KExaoneConfig, bytes_per_value: int) -> int:
    return 2 * c.num_key_value_heads * c.head_dim * bytes_per_value  # K and V


def kv_cache_bytes_per_token(config: KExaoneConfig, bytes_per_value: int = 2, include_mtp: bool = False) -> int:
    """Bytes the KV cache grows by per token of context (bf16 by default). Sliding layers add nothing (they hold
    a constant window); the MTP layer (global) is counted only with `include_mtp`."""
    if bytes_per_value < 1:
        raise ValueError(f"bytes_per_value must be >= 1, got {bytes_per_value}")
    growing = sum(1 for i in range(config.num_hidden_layers) if not config.is_sliding(i))
    if include_mtp:
        growing += config.num_nextn_predict_layers
    return growing * _kv_bytes_per_layer_token(config, bytes_per_value)


def kv_cache_bytes(config: KExaoneConfig, context_len: int, bytes_per_value: int = 2, extra_slots: int = 0,
                   include_mtp: bool = False) -> int:
    """Whole KV cache for one sequence of `context_len` tokens: global layers hold every position, sliding layers
    at most `window + extra_slots` (the ring buffer's spare slots for rollback)."""
    if context_len < 0:
        raise ValueError(f"context_len must be >= 0, got {context_len}")
    per = _kv_bytes_per_layer_token(config, bytes_per_value)
    total = context_len * kv_cache_bytes_per_token(config, bytes_per_value, include_mtp)
    n_sliding = sum(1 for i in range(config.num_hidden_layers) if config.is_sliding(i))
    if n_sliding:
        total += n_sliding * min(context_len, config.sliding_window + extra_slots) * per
    return total


def sliding_kv_cache_bytes(config: KExaoneConfig, bytes_per_value: int = 2, extra_slots: int = 0) -> int:
    """Constant bytes held by the sliding layers of one sequence once the context exceeds the window."""
    n_sliding = sum(1 for i in range(config.num_hidden_layers) if config.is_sliding(i))
    if not n_sliding:
        return 0
    return n_sliding * (config.sliding_window + extra_slots) * _kv_bytes_per_layer_token(config, bytes_per_value)


# -------------------------------------------------------------------------------------------------------- FLOPs
def mean_keys_per_query(seq_len: int, window: int | None) -> float:
    """Average number of keys a causal query attends to over positions 0..seq_len-1 (window=None: global)."""
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    if window is None or window >= seq_len:
        return (seq_len + 1) / 2
    # positions 0..window-1 see p+1 keys; the remaining seq_len-window positions see `window` keys each
    return (window * (window + 1) / 2 + (seq_len - window) * window) / seq_len


def flops_per_token(config: KExaoneConfig, seq_len: int, include_mtp: bool = False) -> float:
    """Forward FLOPs per token for sequences of `seq_len` tokens (convention in the module docstring)."""
    c = config
    counts = count_parameters(c)
    lookup = c.vocab_size * c.hidden_size  # the input embedding is a gather, not a matmul
    norm_params = counts["norms"]
    matmul = counts["active"] - norm_params
    if not c.tie_word_embeddings:
        matmul -= lookup  # lm_head stays; a tied lm_head was counted once, as the matmul
    attn_per_pair = 4 * c.num_attention_heads * c.head_dim
    attn = 0.0
    for i in range(c.num_hidden_layers):
        window = c.sliding_window if c.is_sliding(i) else None
        attn += attn_per_pair * mean_keys_per_query(seq_len, window)
    flops = 2.0 * matmul + attn
    if include_mtp and c.num_nextn_predict_layers:
        mtp_norms = c.num_nextn_predict_layers * (2 * c.head_dim + 5 * c.hidden_size)
        # the MTP block's matmuls plus its own pass through the shared lm_head, and its global attention
        flops += 2.0 * (counts["mtp"] - mtp_norms + c.vocab_size * c.hidden_size * c.num_nextn_predict_layers)
        flops += c.num_nextn_predict_layers * attn_per_pair * mean_keys_per_query(seq_len, None)
    return flops


# --------------------------------------------------------------------------------------------------- summary
def summarize(config: KExaoneConfig, seq_len: int = 8192) -> dict[str, Any]:
    """Everything `kexaone info --json` prints."""
    counts = count_parameters(config)
    n_global = sum(1 for i in range(config.num_hidden_layers) if not config.is_sliding(i))
    return {
        "total_params": counts["total"],
        "active_params": counts["active"],
        "mtp_params": counts["mtp"],
        "main_params": counts["main"],
        "active_non_embedding_params": counts["active_non_embedding"],
        "embedding_params": counts["embedding"],
        "attention_params": counts["attention"],
        "routed_expert_params": counts["routed_experts"],
        "shared_expert_params": counts["shared_experts"],
        "dense_mlp_params": counts["dense_mlp"],
        "router_params": counts["router"],
        "norm_params": counts["norms"],
        "router_bias_buffers": counts["router_bias_buffers"],
        "kv_cache_bytes_per_token": kv_cache_bytes_per_token(config, 2),
        "kv_cache_bytes_per_token_with_mtp": kv_cache_bytes_per_token(config, 2, include_mtp=True),
        "sliding_kv_cache_bytes": sliding_kv_cache_bytes(config, 2),
        "seq_len": seq_len,
        "flops_per_token": flops_per_token(config, seq_len),
        "flops_per_token_with_mtp": flops_per_token(config, seq_len, include_mtp=True),
        "layers": config.num_hidden_layers,
        "global_layers": n_global,
        "sliding_layers": config.num_hidden_layers - n_global,
        "sliding_window": config.sliding_window,
        "experts": config.num_experts,
        "experts_per_token": config.num_experts_per_tok,
        "shared_experts": config.num_shared_experts,
    }


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{n:.0f}"


def _human_bytes(n: float) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def format_table(name: str, s: dict[str, Any]) -> str:
    rows = [
        ("total parameters", _human(s["total_params"])),
        ("active parameters / token", _human(s["active_params"])),
        ("MTP parameters", _human(s["mtp_params"])),
        ("  embedding + lm_head", _human(s["embedding_params"])),
        ("  attention", _human(s["attention_params"])),
        ("  routed experts", _human(s["routed_expert_params"])),
        ("  shared experts", _human(s["shared_expert_params"])),
        ("  dense FFN", _human(s["dense_mlp_params"])),
        ("  routers", _human(s["router_params"])),
        ("layers (sliding / global)", f"{s['layers']} ({s['sliding_layers']} / {s['global_layers']}), "
                                      f"window {s['sliding_window']}"),
        ("experts", f"{s['experts']} routed, top-{s['experts_per_token']}, {s['shared_experts']} shared"),
        ("KV cache / token (bf16)", _human_bytes(s["kv_cache_bytes_per_token"])),
        ("KV cache, sliding layers (constant)", _human_bytes(s["sliding_kv_cache_bytes"])),
        (f"forward FLOPs / token @ {s['seq_len']}", _human(s["flops_per_token"])),
    ]
    width = max(len(r[0]) for r in rows)
    lines = [f"{name}", "-" * (width + 16)]
    lines += [f"{label:<{width}}  {value}" for label, value in rows]
    return "\n".join(lines)


# -------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None,
                     help=f"named configuration, one of {KExaoneConfig.preset_names()} (default k-exaone-236b-a23b)")
    src.add_argument("--config", default=None,
                     help="a config.json, or a model directory containing one (exaone_moe format)")
    parser.add_argument("--seq-len", type=int, default=8192, help="sequence length for FLOPs per token (default 8192)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")


def _load_config(args: argparse.Namespace) -> tuple[str, KExaoneConfig]:
    if args.config is not None:
        path = Path(os.path.expanduser(args.config))
        if path.is_dir():
            path = path / "config.json"
        return str(path), KExaoneConfig.from_json_file(path)
    name = args.preset or "k-exaone-236b-a23b"
    return name, KExaoneConfig.preset(name)


def run(args: argparse.Namespace) -> int:
    if args.seq_len < 1:
        raise ValueError(f"--seq-len must be >= 1, got {args.seq_len}")
    name, config = _load_config(args)
    summary = summarize(config, args.seq_len)
    if args.json:
        print(json.dumps({"config": name, **summary}, sort_keys=False))
    else:
        print(format_table(name, summary))
    return 0
