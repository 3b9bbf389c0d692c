"""Hugging Face `exaone_moe` checkpoint I/O: the on-disk layout that transformers 5.x, vLLM and SGLang read.

On disk (SPEC section 8) experts are stored one by one
(`model.layers.{l}.mlp.experts.{e}.{gate_proj,up_proj,down_proj}.weight`), the router bias sits beside the router as
`model.layers.{l}.mlp.e_score_correction_bias` (fp32), and the MTP block is `mtp.*`. In memory kexaone stacks the
experts (`mlp.experts.gate_up_proj` [E, 2I, H], `mlp.experts.down_proj` [E, H, I]) and keeps the bias in the router
(`mlp.gate.e_score_correction_bias`). This module converts between the two, one tensor at a time:

- loading builds the model on the meta device, allocates it once in the target dtype, then copies each stored
  tensor (read lazily with `safe_open`) straight into its place (an expert's slice of the stacked weight);
- saving plans the shards from tensor sizes first, then materialises one shard at a time into a temporary file;
  only when all are written does it remove the old index, rename the shards into place and write
  `model.safetensors.index.json` last. An interrupted save therefore never leaves an index over mixed shards: a
  single-file checkpoint is replaced by one atomic rename, a sharded one is either complete (index present) or
  rejected with a clear error (index missing).

Only safetensors is read: no pickle, ever. Errors name the file, the tensor and what was expected.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch

from kexaone.config import KExaoneConfig
from kexaone.utils.io import atomic_write_text, fsync_dir

CONFIG_NAME = "config.json"
SINGLE_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
_SHARD_RE = re.compile(r"^model-\d{5}-of-\d{5}\.safetensors$")
_EXPERTS_RE = re.compile(r"^(.*\.mlp)\.experts\.(gate_up_proj|down_proj)$")
_BIAS_MEM_RE = re.compile(r"^(.*\.mlp)\.gate\.e_score_correction_bias$")

_DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ---------------------------------------------------------------------------------------------- key mapping
def disk_entries(model) -> Iterator[tuple[str, str, tuple[int, ...], object]]:
    """Yield (disk_name, memory_name, disk_shape, index) for every tensor stored on disk, in a stable order.

    `index` selects the part of the memory tensor the disk tensor holds: None (whole tensor) or
    (expert e, row slice or None)."""
    tied = model.config.tie_word_embeddings
    for name, t in model.state_dict(keep_vars=True).items():
        if tied and name == "lm_head.weight":
            continue
        m = _EXPERTS_RE.match(name)
        if m:
            prefix, kind = m.groups()
            E = t.shape[0]
            if kind == "gate_up_proj":
                inter = t.shape[1] // 2
                for e in range(E):
                    yield f"{prefix}.experts.{e}.gate_proj.weight", name, (inter, t.shape[2]), (e, slice(0, inter))
                    yield f"{prefix}.experts.{e}.up_proj.weight", name, (inter, t.shape[2]), (e, slice(inter, 2 * inter))
            else:
                for e in range(E):
                    yield f"{prefix}.experts.{e}.down_proj.weight", name, tuple(t.shape[1:]), (e, None)
            continue
        m = _BIAS_MEM_RE.match(name)
        if m:
            yield f"{m.group(1)}.e_score_correction_bias", name, tuple(t.shape), None
            continue
        yield name, name, tuple(t.shape), None


def _select(t: torch.Tensor, index) -> torch.Tensor:
    if index is None:
        return t
    e, rows = index
    return t[e] if rows is None else t[e, rows]


def _is_router_bias(disk_name: str) -> bool:
    return disk_name.endswith(".e_score_correction_bias")


# ---------------------------------------------------------------------------------------------- saving
def save_pretrained(model, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    max_shard_bytes: int = 5 * 1024**3) -> None:
    """Write config.json and the weights of `model` to directory `path` (created if missing).

    dtype: cast floating tensors (the router bias always stays fp32); None keeps the in-memory dtypes.
    max_shard_bytes: above this total, weights are split into model-0000i-of-0000N.safetensors plus an index."""
    if any(p.is_meta for p in model.parameters()):
        raise ValueError("cannot save a model on the meta device: it holds no weights")
    state = model.state_dict(keep_vars=True)
    save_streamed(model.config, lambda name: state[name].detach(), path, dtype=dtype,
                  max_shard_bytes=max_shard_bytes, main_dtype=model.lm_head.weight.dtype,
                  dtypes={k: v.dtype for k, v in state.items()})


def save_streamed(config: KExaoneConfig, fetch, path: str | os.PathLike, *, write: bool = True,
                  dtype: torch.dtype | None = None, max_shard_bytes: int = 5 * 1024**3,
                  main_dtype: torch.dtype = torch.float32, dtypes: dict[str, torch.dtype] | None = None) -> None:
    """Write the HF layout of a model given only its config and `fetch(memory_name) -> full tensor`, one shard at
    a time: tensors are fetched in the order of the shards and each shard is written and dropped before the next
    one is filled, so at most one shard (plus one full parameter) is in memory. `fetch` may be a collective (a
    sharded model gathering one parameter): every rank then calls this with `write=False` except the writer, and
    every rank fetches the same tensors in the same order. `dtypes`: in-memory dtype per memory name (for shard
    sizes; default: the config's model built on the meta device in `main_dtype`)."""
    from safetensors.torch import save_file

    from kexaone.model.transformer import KExaoneForCausalLM

    if not isinstance(max_shard_bytes, int) or max_shard_bytes < 1:
        raise ValueError(f"max_shard_bytes must be a positive integer, got {max_shard_bytes!r}")
    if dtype is not None and dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    ref = KExaoneForCausalLM.from_config(config, device="meta", dtype=main_dtype)  # names and shapes only
    if dtypes is None:
        dtypes = {k: v.dtype for k, v in ref.state_dict(keep_vars=True).items()}
    out = Path(path)
    if write:
        out.mkdir(parents=True, exist_ok=True)

    def out_dtype(disk_name: str, in_memory: torch.dtype) -> torch.dtype:
        if _is_router_bias(disk_name):
            return torch.float32
        return dtype if (dtype is not None and in_memory.is_floating_point) else in_memory

    entries = list(disk_entries(ref))
    sizes = []
    for disk_name, mem_name, shape, _ in entries:
        n = 1
        for s in shape:
            n *= s
        sizes.append(n * torch.empty((), dtype=out_dtype(disk_name, dtypes[mem_name])).element_size())
    shards: list[list[int]] = [[]]
    cur = 0
    for i, sz in enumerate(sizes):
        if shards[-1] and cur + sz > max_shard_bytes:
            shards.append([])
            cur = 0
        shards[-1].append(i)
        cur += sz

    names = [SINGLE_NAME] if len(shards) == 1 else [
        f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    # Phase 1: every shard goes to a temporary file (fsynced); nothing the loader reads has changed yet.
    weight_map: dict[str, str] = {}
    temps: list[Path] = []
    cached: tuple[str, torch.Tensor] | None = None  # the last fetched parameter (stacked experts span entries)
    try:
        for fname, idxs in zip(names, shards):
            tensors = {}
            for i in idxs:
                disk_name, mem_name, _, index = entries[i]
                if cached is None or cached[0] != mem_name:
                    cached = (mem_name, fetch(mem_name))
                if write:
                    t = _select(cached[1], index)
                    tensors[disk_name] = t.to(out_dtype(disk_name, t.dtype)).contiguous().cpu()
                    weight_map[disk_name] = fname
            if write:
                temps.append(_write_temp_safetensors(save_file, tensors, out, fname))
            del tensors
    except BaseException:
        for t in temps:
            t.unlink(missing_ok=True)
        raise
    cached = None
    if not write:
        return
    # Phase 2: drop the old index first, so an interruption while the shards are renamed leaves a directory the
    # loader rejects loudly (no index) instead of an old index over a mix of old and new shards.
    (out / INDEX_NAME).unlink(missing_ok=True)
    for tmp, fname in zip(temps, names):
        os.replace(tmp, out / fname)
    fsync_dir(out)
    # Phase 3: config.json, then the index, last: its presence marks a complete sharded checkpoint.
    main = dtype or main_dtype
    cfg = config.to_hf_dict()
    cfg["dtype"] = _DTYPE_NAMES.get(main, str(main).replace("torch.", ""))
    atomic_write_text(out / CONFIG_NAME, json.dumps(cfg, indent=2, sort_keys=True) + "\n")

    if len(shards) > 1:
        index = {"metadata": {"total_size": sum(sizes)}, "weight_map": weight_map}
        atomic_write_text(out / INDEX_NAME, json.dumps(index, indent=2, sort_keys=True) + "\n")
    keep = set(names)
    for f in out.iterdir():  # shards of an earlier save that this one does not use
        if (f.name == SINGLE_NAME or _SHARD_RE.match(f.name)) and f.name not in keep:
            f.unlink(missing_ok=True)


def _write_temp_safetensors(save_file, tensors: dict, out: Path, fname: str) -> Path:
    fd, tmp = tempfile.mkstemp(prefix=f".{fname}.", suffix=".tmp", dir=out)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={"format": "pt"})
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


# ---------------------------------------------------------------------------------------------- loading
def read_weight_map(path: str | os.PathLike) -> dict[str, Path]:
    """{disk tensor name: file} for the safetensors weights of a checkpoint directory."""
    d = Path(path)
    index = d / INDEX_NAME
    if index.exists():
        try:
            wm = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{index} is not a valid safetensors index (needs a 'weight_map' object): {e}") from None
        files = {name: d / f for name, f in wm.items()}
        for f in sorted(set(files.values())):
            if not f.exists():
                raise FileNotFoundError(f"{index} refers to {f.name}, which is missing from {d}")
        return files
    single = d / SINGLE_NAME
    if single.exists():
        return {name: single for name in _keys_of(single)}
    present = sorted(p.name for p in d.iterdir())
    hint = ""
    if any(n.endswith((".bin", ".pt", ".pth")) for n in present):
        hint = " (pickle checkpoints such as pytorch_model.bin are not read: convert them to safetensors)"
    raise FileNotFoundError(f"no {SINGLE_NAME} or {INDEX_NAME} in {d}{hint}; found: {present[:10]}")


def _open(file: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(file), framework="pt", device="cpu")
    except Exception as e:  # safetensors raises its own error types for truncated/garbled headers
        raise ValueError(f"{file} is not a valid safetensors file: {e}") from None


def _keys_of(file: Path) -> list[str]:
    with _open(file) as f:
        return list(f.keys())


def load_pretrained(cls, path: str | os.PathLike, dtype: torch.dtype | None = None,
                    device: torch.device | str | None = None, init_missing_mtp: bool = False,
                    config: KExaoneConfig | None = None):
    """Build `cls` from a checkpoint directory.

    dtype: parameter dtype (default float32, the fast CPU path; the router bias is always fp32).
    init_missing_mtp: a checkpoint without `mtp.*` (e.g. one saved by transformers, which drops them) loads with MTP
      disabled and a warning; pass True to keep a freshly initialised MTP block instead (to train it).
    config: override the directory's config.json."""
    d = Path(path)
    if not d.exists():
        raise FileNotFoundError(f"checkpoint directory {d} does not exist")
    if not d.is_dir():
        raise FileNotFoundError(f"{d} is not a directory (from_pretrained expects a checkpoint directory)")
    if config is None:
        if not (d / CONFIG_NAME).exists():
            raise FileNotFoundError(f"no {CONFIG_NAME} in {d}")
        config = KExaoneConfig.from_json_file(d / CONFIG_NAME)
    dtype = dtype or torch.float32
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"dtype must be one of {list(_DTYPE_NAMES)}, got {dtype}")
    device = torch.device(device or "cpu")
    files = read_weight_map(d)

    has_mtp_on_disk = any(k.startswith("mtp.") for k in files)
    init_mtp = False
    if config.num_nextn_predict_layers and not has_mtp_on_disk:
        if init_missing_mtp:
            init_mtp = True
        else:
            warnings.warn(f"{d} holds no mtp.* weights: loading with MTP disabled "
                          "(pass init_missing_mtp=True to initialise a fresh MTP block)", stacklevel=3)
            config = config.replace(num_nextn_predict_layers=0)

    model = cls.from_config(config, device="meta")
    model = model.to_empty(device=device).to(dtype)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight

    state = model.state_dict(keep_vars=True)
    expected = {}
    for disk_name, mem_name, shape, index in disk_entries(model):
        if init_mtp and disk_name.startswith("mtp."):
            continue
        expected[disk_name] = (mem_name, shape, index)
    ignorable = ("mtp.",) if not config.num_nextn_predict_layers else ()
    unexpected = [k for k in files if k not in expected and not k.startswith(ignorable)
                  and not (config.tie_word_embeddings and k == "lm_head.weight")]
    missing = [k for k in expected if k not in files]
    if missing:
        raise ValueError(f"{d} is missing {len(missing)} tensor(s) the model needs, e.g. {missing[:5]}")
    if unexpected:
        raise ValueError(f"{d} holds {len(unexpected)} tensor(s) this config does not use, e.g. {unexpected[:5]} "
                         "(does config.json match the weights?)")

    by_file: dict[Path, list[str]] = {}
    for k in expected:
        by_file.setdefault(files[k], []).append(k)
    with torch.no_grad():
        for file, keys in by_file.items():
            with _open(file) as f:
                stored = set(f.keys())
                for k in keys:
                    if k not in stored:
                        raise ValueError(f"{file.name} does not hold {k}, although the index says it does")
                    mem_name, shape, index = expected[k]
                    sl = f.get_slice(k)
                    got = tuple(sl.get_shape())
                    if got != shape:
                        raise ValueError(f"tensor {k} in {file.name} has shape {got}; the model expects {shape}")
                    try:
                        t = f.get_tensor(k)
                    except Exception as e:
                        raise ValueError(f"{file} is corrupt: reading {k} failed: {e}") from None
                    target = _select(state[mem_name], index)
                    target.copy_(t.to(target.dtype))
    if init_mtp:
        _init_mtp(model)
    model.reset_buffers()
    return model


@torch.no_grad()
def _init_mtp(model) -> None:
    from torch import nn

    from kexaone.model.norm import RMSNorm

    for m in model.mtp.modules():
        if isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, mean=0.0, std=model.config.initializer_range)
        elif isinstance(m, RMSNorm):
            m.reset_parameters()
