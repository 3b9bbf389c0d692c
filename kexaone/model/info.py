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

- Memory plan (`memory_plan`, `kexaone info --plan --gpus N --gpu-mem 80GiB [--ep E]`): bytes per rank for
  training with FSDP2 over all N ranks (kexaone.train.parallelize), optionally with the routed experts split over
  E ranks (expert parallelism inside the FSDP group: still 1/N of every weight per rank). fp32 master parameters,
  fp32 gradients (reduce-scattered: 1/N each), optimizer state 1/N (Muon: one fp32 momentum per matrix; AdamW for
  embeddings, lm_head, routers and 1-D tensors, as kexaone.train.optim sorts them: two fp32 moments). Transient: FSDP gathers one decoder layer at a time in
  the compute dtype with one layer prefetched (2 layers, the routed experts of a layer counted 1/E), and one
  layer's unsharded fp32 gradient before its reduce-scatter. Activations per micro-batch of B x T tokens with
  activation checkpointing: every layer's input (B*T*H, compute dtype) plus one layer recomputed (attention
  projections and MoE pairs, see `_layer_activation_bytes`) plus the logits (compute dtype, fp32 log-softmax and
  its gradient); without it, every layer's. Not counted: the CUDA context and allocator fragmentation (reported as
  the headroom left), communication buffers, the MTP block's activations.

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


# --------------------------------------------------------------------------------------------------- memory plan
def _layer_params(c: KExaoneConfig, sparse: bool, ep: int) -> int:
    if sparse:
        experts = c.num_experts * _swiglu_params(c.hidden_size, c.moe_intermediate_size) // ep
        mlp = experts + _swiglu_params(c.hidden_size, c.moe_intermediate_size * c.num_shared_experts) + \
            c.num_experts * c.hidden_size
    else:
        mlp = _swiglu_params(c.hidden_size, c.intermediate_size)
    return _attention_params(c) + mlp + 2 * c.hidden_size


def _layer_activation_bytes(c: KExaoneConfig, tokens: int, act_bytes: int) -> int:
    """Saved tensors of one decoder layer's forward for `tokens` tokens: norms' inputs and outputs, q/k/v/o, the
    attention output (memory-efficient attention keeps no T x T matrix), the router scores (fp32), and per routed
    (token, slot) pair its gathered input, gate/up projections and activated product."""
    h, q, kv = c.hidden_size, c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    attn = tokens * (4 * h + 2 * q + 2 * kv) * act_bytes
    k, i = c.num_experts_per_tok, c.moe_intermediate_size
    moe = tokens * k * (h + 3 * i) * act_bytes + tokens * c.num_experts * 4
    shared = tokens * 3 * i * c.num_shared_experts * act_bytes
    return attn + max(moe + shared, tokens * 3 * c.intermediate_size * act_bytes)


def memory_plan(config: KExaoneConfig, gpus: int, gpu_mem: int | None = None, *, ep: int = 1, micro_batch: int = 1,
                seq_len: int = 8192, activation_checkpointing: bool = True, compute_bytes: int = 2,
                optimizer: str = "muon") -> dict[str, Any]:
    """Training memory per rank (bytes) for FSDP2 over `gpus` ranks with the routed experts over `ep` of them; see
    the module docstring for what is counted. Raises ValueError for impossible layouts."""
    c = config
    if gpus < 1:
        raise ValueError(f"gpus must be >= 1, got {gpus}")
    if ep < 1 or gpus % ep or c.num_experts % ep:
        raise ValueError(f"ep must divide both the number of ranks ({gpus}) and of experts ({c.num_experts}), "
                         f"got {ep}")
    if optimizer not in ("muon", "adamw"):
        raise ValueError(f"optimizer must be 'muon' or 'adamw', got {optimizer!r}")
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.optim import MUON, classify_parameter

    n = count_parameters(c)
    total = n["total"]
    # Which tensors Muon takes is the optimizer's own rule, applied to the model built on the meta device (free).
    meta = KExaoneForCausalLM.from_config(c, device="meta")
    adamw = total if optimizer == "adamw" else sum(
        p.numel() for name, p in meta.named_parameters() if classify_parameter(name, p) != MUON)
    optim_state = (total - adamw) * 4 + adamw * 8
    sparse = [c.is_sparse(i) for i in range(c.num_hidden_layers)]
    biggest = max(_layer_params(c, s, ep) for s in sparse)
    tokens = micro_batch * seq_len
    per_layer_input = tokens * c.hidden_size * compute_bytes
    layer_act = _layer_activation_bytes(c, tokens, compute_bytes)
    logits = tokens * c.vocab_size * (compute_bytes + 4 + 4)
    if activation_checkpointing:
        activations = c.num_hidden_layers * per_layer_input + layer_act + logits
    else:
        activations = c.num_hidden_layers * (layer_act + per_layer_input) + logits
    plan = {
        "gpus": gpus, "ep": ep, "micro_batch": micro_batch, "seq_len": seq_len,
        "activation_checkpointing": activation_checkpointing,
        "params_total": total,
        "param_bytes": -(-total * 4 // gpus),
        "grad_bytes": -(-total * 4 // gpus),
        "optimizer_bytes": -(-optim_state // gpus),
        "gathered_layer_bytes": 2 * biggest * compute_bytes + biggest * 4,
        "activation_bytes": activations,
    }
    plan["total_bytes"] = sum(plan[k] for k in ("param_bytes", "grad_bytes", "optimizer_bytes",
                                                  "gathered_layer_bytes", "activation_bytes"))
    if gpu_mem is not None:
        plan["gpu_mem"] = gpu_mem
        plan["headroom_bytes"] = gpu_mem - plan["total_bytes"]
        plan["fits"] = plan["headroom_bytes"] > 0
    return plan


def parse_bytes(text: str) -> int:
    """'80GiB', '80GB', '512MiB', '1.5TiB' or a plain number of bytes -> bytes."""
    import re

    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]i?B|B)?\s*", text or "", flags=re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read a memory size from {text!r}; write e.g. 80GiB, 80GB or 512MiB")
    unit = (m.group(2) or "B").upper()
    scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
    return int(float(m.group(1)) * scale)


def format_plan(name: str, p: dict[str, Any]) -> str:
    rows = [("layout", f"FSDP2 over {p['gpus']} ranks, routed experts over {p['ep']}"),
            ("micro-batch", f"{p['micro_batch']} x {p['seq_len']} tokens, activation checkpointing "
                            f"{'on' if p['activation_checkpointing'] else 'off'}"),
            ("parameters (fp32 shard)", _human_bytes(p["param_bytes"])),
            ("gradients (fp32 shard)", _human_bytes(p["grad_bytes"])),
            ("optimizer state (shard)", _human_bytes(p["optimizer_bytes"])),
            ("gathered layers (transient)", _human_bytes(p["gathered_layer_bytes"])),
            ("activations", _human_bytes(p["activation_bytes"])),
            ("total per rank", _human_bytes(p["total_bytes"]))]
    if "gpu_mem" in p:
        rows.append(("GPU memory", f"{_human_bytes(p['gpu_mem'])}: "
                                   + (f"fits, {_human_bytes(p['headroom_bytes'])} headroom" if p["fits"]
                                      else f"does NOT fit, {_human_bytes(-p['headroom_bytes'])} short")))
    width = max(len(r[0]) for r in rows)
    lines = [f"{name}: training memory per rank", "-" * (width + 16)]
    return "\n".join(lines + [f"{label:<{width}}  {value}" for label, value in rows])


# -------------------------------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--preset", default=None,
                     help=f"named configuration, one of {KExaoneConfig.preset_names()} (default k-exaone-236b-a23b)")
    src.add_argument("--config", default=None,
                     help="a config.json, or a model directory containing one (exaone_moe format)")
    parser.add_argument("--seq-len", type=int, default=8192, help="sequence length for FLOPs per token (default 8192)")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    plan = parser.add_argument_group("memory plan")
    plan.add_argument("--plan", action="store_true", help="print the training memory per rank instead")
    plan.add_argument("--gpus", type=int, default=8, help="ranks FSDP shards over (default 8)")
    plan.add_argument("--gpu-mem", default=None, help="memory of one GPU, e.g. 80GiB: says whether the plan fits")
    plan.add_argument("--ep", type=int, default=1, help="ranks the routed experts are split over (default 1)")
    plan.add_argument("--micro-batch", type=int, default=1, help="sequences per rank per micro-batch (default 1)")
    plan.add_argument("--no-activation-checkpointing", action="store_true",
                      help="plan without activation checkpointing")


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
    if getattr(args, "plan", False):
        plan = memory_plan(config, args.gpus, parse_bytes(args.gpu_mem) if args.gpu_mem else None, ep=args.ep,
                           micro_batch=args.micro_batch, seq_len=args.seq_len,
                           activation_checkpointing=not args.no_activation_checkpointing)
        print(json.dumps({"config": name, **plan}) if args.json else format_plan(name, plan))
        return 0
    summary = summarize(config, args.seq_len)
    if args.json:
        print(json.dumps({"config": name, **summary}, sort_keys=False))
    else:
        print(format_table(name, summary))
    return 0
