"""Crash-safe training checkpoints: atomic directories, a `latest` pointer, pruning, and RNG-state helpers.

Layout of a checkpoint directory `DIR/step_{N:08d}/`:
  model.safetensors   the "model" entry of the saved state when it is a flat {name: tensor} dict
  {key}.pt            every other top-level entry, written with torch.save (plain dicts, lists, tensors, numbers)
  manifest.json       written last: step, file names, byte sizes and sha256 of every file, the top-level entries
                      that are plain scalars (None, bool, int, finite float, str: kept exactly), user metadata
  sharded/             (sharded layouts only) a PyTorch Distributed Checkpoint of the "model" and "optimizer"
                      entries: every rank writes its own shards (`__{rank}_*.distcp`), rank 0 the `.metadata`;
                      it loads into any number of ranks (DCP reshards), or into one process
and `DIR/latest` names the newest complete checkpoint.

Atomicity: a checkpoint is written into a hidden temporary directory, every file is fsynced, then the directory is
renamed into place (one atomic rename) and only then is `latest` replaced (atomically). A crash or kill at any
moment leaves every earlier checkpoint untouched and `latest` pointing at a complete one; a leftover temporary
directory is ignored and cleaned up by the next save. Everything reads back with torch.load(weights_only=True)
(no pickled code); `save` refuses, before anything is renamed, state that would not.

A sharded save is a collective: rank 0 creates the temporary directory and tells the others its name, every rank
writes its shards into it (DCP), then rank 0 writes the other entries and the manifest (which records the byte
size of every shard file) and renames the directory into place, so the same atomicity holds. DCP's own save is
synchronous here (its asynchronous variant needs a second process group and a background thread; not used).

Not here: what goes into the state (the trainer decides), the Hugging Face export (kexaone.model.hf).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from kexaone.utils.io import atomic_write_text, fsync_dir

MANIFEST = "manifest.json"
SHARDED_DIR = "sharded"
LATEST = "latest"
FORMAT = "kexaone-checkpoint"
FORMAT_VERSION = 1
_STEP_RE = re.compile(r"^step_(\d{8,})$")
_TMP_PREFIX = ".tmp-"
_KEY_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or corrupt (names the path and what is wrong)."""


# ------------------------------------------------------------------------------------------------ writability
def check_writable(directory: str | os.PathLike) -> Path:
    """Create `directory` if needed and prove files can be written, fsynced, renamed and removed in it.

    Call before training starts so a bad `--out` fails in a second, not after hours. Raises NotADirectoryError when
    the path (or a parent) is a file, PermissionError when it cannot be written; returns the resolved path."""
    from kexaone.utils.io import ensure_writable_dir

    return ensure_writable_dir(directory, "checkpoint directory")


# ------------------------------------------------------------------------------------------------------ helpers
def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_scalar(obj: Any) -> bool:
    """Values JSON keeps exactly (type and value): None, bool, int, finite float, str."""
    if obj is None or isinstance(obj, (bool, int, str)):
        return type(obj) in (type(None), bool, int, str)  # not int/str subclasses such as IntEnum
    return type(obj) is float and math.isfinite(obj)


def _is_tensor_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _write_safetensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    out: dict[str, torch.Tensor] = {}
    seen: set[tuple[int, int]] = set()
    for name, t in tensors.items():
        t = t.detach().to("cpu").contiguous()
        # safetensors refuses tensors sharing storage (tied weights): give each its own copy.
        key = (t.untyped_storage().data_ptr(), t.storage_offset())
        if key in seen or t.untyped_storage().nbytes() != t.numel() * t.element_size():
            t = t.clone()
        seen.add((t.untyped_storage().data_ptr(), t.storage_offset()))
        out[name] = t
    save_file(out, str(path))
    _fsync_file(path)


def _write_torch(obj: Any, path: Path, key: str) -> None:
    with open(path, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    unsafe = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    if unsafe:
        raise ValueError(f"checkpoint entry {key!r} holds objects that torch.load(weights_only=True) refuses: "
                         f"{sorted(unsafe)}; save plain dicts/lists/tensors/numbers instead (for example "
                         "convert numpy arrays with torch.from_numpy)")


def step_of(path: str | os.PathLike) -> int:
    """The step number in a checkpoint directory name `step_{N:08d}`."""
    m = _STEP_RE.match(Path(path).name)
    if not m:
        raise ValueError(f"{path} is not a checkpoint directory name (expected step_NNNNNNNN)")
    return int(m.group(1))


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ------------------------------------------------------------------------------------------------------ manager
class CheckpointManager:
    """Save, find, load and prune checkpoints under one directory.

    `keep`: how many complete checkpoints to keep (the newest ones; None keeps all). The checkpoint `latest`
    points at is never deleted. `model_key`: the state entry written as safetensors when it is a tensor dict.
    """

    def __init__(self, directory: str | os.PathLike, keep: int | None = 3, model_key: str = "model") -> None:
        if keep is not None and (int(keep) != keep or keep < 1):
            raise ValueError(f"keep must be an integer >= 1 (or None to keep every checkpoint), got {keep!r}")
        self.directory = Path(directory).expanduser()
        self.keep = keep
        self.model_key = model_key

    def check_writable(self) -> Path:
        return check_writable(self.directory)

    # ---------------------------------------------------------------- save
    def save(self, step: int, state: Mapping[str, Any], metadata: Mapping[str, Any] | None = None,
             sharded: Mapping[str, Any] | None = None) -> Path:
        """Write `state` (a dict of entries) as checkpoint `step` and return its directory.

        `sharded`: entries (DCP state dicts of DTensors / tensors) written through torch.distributed.checkpoint;
        then this is a collective that every rank calls (only rank 0's `state` and `metadata` are written).
        Overwrites an existing checkpoint of the same step (only after the new one is complete). Raises ValueError
        for a bad step, key or an entry torch.load(weights_only=True) could not read; nothing is renamed then."""
        if sharded is not None:
            return self._save_sharded(step, state, metadata, sharded)
        if int(step) != step or step < 0:
            raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
        if not isinstance(state, Mapping) or not state:
            raise ValueError("checkpoint state must be a non-empty dict of entries")
        for key in state:
            if not isinstance(key, str) or not _KEY_RE.match(key) or key == "manifest":
                raise ValueError(f"checkpoint entry name {key!r} is invalid: use letters, digits, '_', '.', '-' "
                                 "(not starting with '.' or '-', and not 'manifest')")
        if metadata is not None:
            metadata = json.loads(json.dumps(dict(metadata)))  # must be JSON; fail before writing
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"step_{int(step):08d}"
        final = self.directory / name
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-{os.getpid()}-", dir=self.directory))
        return self._finish(step, state, metadata, tmp, final, sharded_files=None)

    def _finish(self, step: int, state: Mapping[str, Any], metadata: Any, tmp: Path, final: Path,
                sharded_files: dict[str, int] | None) -> Path:
        """Write the entries and the manifest into `tmp`, rename it to `final`, move `latest`, prune."""
        name = final.name
        try:
            files: dict[str, dict[str, Any]] = {}
            values: dict[str, Any] = {}
            for key, value in state.items():
                if _is_scalar(value):
                    values[key] = value  # small scalars (step, token counts, names) live in the manifest itself
                    continue
                if key == self.model_key and _is_tensor_dict(value):
                    fname = f"{key}.safetensors"
                    _write_safetensors(value, tmp / fname)
                else:
                    fname = f"{key}.pt"
                    _write_torch(value, tmp / fname, key)
                files[key] = {"file": fname, "bytes": (tmp / fname).stat().st_size, "sha256": _sha256(tmp / fname)}
            manifest = {"format": FORMAT, "version": FORMAT_VERSION, "step": int(step), "created": time.time(),
                        "order": list(state), "files": files, "values": values, "metadata": metadata or {}}
            if sharded_files is not None:
                manifest["sharded"] = {"dir": SHARDED_DIR, "files": sharded_files}
            with open(tmp / MANIFEST, "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            self._move_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(self.directory / LATEST, name + "\n")
        self._prune(protect=final)
        return final

    def _save_sharded(self, step: int, state: Mapping[str, Any], metadata: Mapping[str, Any] | None,
                      sharded: Mapping[str, Any]) -> Path:
        import torch.distributed as dist
        import torch.distributed.checkpoint as dcp

        if int(step) != step or step < 0:
            raise ValueError(f"checkpoint step must be an integer >= 0, got {step!r}")
        multi = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if multi else 0
        name = f"step_{int(step):08d}"
        final = self.directory / name
        box: list[Any] = [None]
        if rank == 0:
            if metadata is not None:
                metadata = json.loads(json.dumps(dict(metadata)))
            self.directory.mkdir(parents=True, exist_ok=True)
            box[0] = tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{name}-{os.getpid()}-", dir=self.directory)
        if multi:
            dist.broadcast_object_list(box, src=0)  # every rank writes into rank 0's temporary directory
        tmp = Path(box[0])
        try:
            with _single_process_dcp_quiet():
                dcp.save(dict(sharded), checkpoint_id=str(tmp / SHARDED_DIR))
            for f in (tmp / SHARDED_DIR).iterdir():
                if f.name.startswith(f"__{rank}_") or (rank == 0 and f.name == ".metadata"):
                    _fsync_file(f)
            if multi:
                dist.barrier()  # every shard is on disk before rank 0 seals the checkpoint
        except BaseException:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
        if rank != 0:
            return final
        fsync_dir(tmp / SHARDED_DIR)
        files = {f.name: f.stat().st_size for f in sorted((tmp / SHARDED_DIR).iterdir())}
        return self._finish(step, state, metadata, tmp, final, sharded_files=files)

    def load_sharded(self, path: str | os.PathLike, target: dict[str, Any]) -> None:
        """Fill `target` (state dicts in this run's layout: DTensors, local or full tensors) in place from the
        checkpoint's Distributed Checkpoint, resharding from whatever world size wrote it. Every rank calls it."""
        import torch.distributed.checkpoint as dcp

        path = Path(path)
        if self._read_manifest(path).get("sharded") is None:
            raise CheckpointError(f"{path} holds no sharded (Distributed Checkpoint) entries")
        with _single_process_dcp_quiet():
            dcp.load(target, checkpoint_id=str(path / SHARDED_DIR))

    def model_tensors(self, path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
        """The full (single-process) model weights of a checkpoint in this process, whichever way it was written:
        `model.safetensors`, or the "model" entry of its Distributed Checkpoint (assembled from every rank's
        shards; no process group needed). For inspection and tests: it holds the whole model in memory."""
        path = self.latest() if path is None else Path(path)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        path = Path(path)
        manifest = self._read_manifest(path)
        if manifest.get("sharded") is None:
            from safetensors.torch import load_file

            return load_file(str(path / manifest["files"][self.model_key]["file"]))
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.metadata import TensorStorageMetadata

        reader = dcp.FileSystemReader(str(path / SHARDED_DIR))
        prefix = f"{self.model_key}."
        target = {k[len(prefix):]: torch.empty(tuple(m.size), dtype=m.properties.dtype)
                  for k, m in reader.read_metadata().state_dict_metadata.items()
                  if k.startswith(prefix) and isinstance(m, TensorStorageMetadata)}
        wrapped = {self.model_key: target}
        with _single_process_dcp_quiet():
            dcp.load(wrapped, storage_reader=reader, no_dist=True)
        return wrapped[self.model_key]

    def _move_into_place(self, tmp: Path, final: Path) -> None:
        if final.exists():
            # Re-saving a step (e.g. after a resume): park the old one, rename the new in, then delete the old.
            old = self.directory / f"{_TMP_PREFIX}old-{final.name}-{os.getpid()}-{time.time_ns()}"
            os.replace(final, old)
            os.replace(tmp, final)
            fsync_dir(self.directory)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
            fsync_dir(self.directory)

    # ---------------------------------------------------------------- find
    def checkpoints(self) -> list[Path]:
        """Complete checkpoint directories (manifest present, files of the recorded sizes), oldest save first.

        Ordered by the time they were saved (then step), not by step alone: after resuming from an older step, the
        new checkpoints are the current timeline and the abandoned higher steps are the first to be pruned."""
        if not self.directory.is_dir():
            return []
        found = []
        for p in self.directory.iterdir():
            if p.is_dir() and _STEP_RE.match(p.name) and self._problem(p, hash_files=False) is None:
                created = self._read_manifest(p).get("created", 0.0)
                found.append((float(created), step_of(p), p))
        return [p for _, _, p in sorted(found)]

    def latest(self) -> Path | None:
        """The checkpoint to resume from: the one the `latest` pointer names when it is complete, else the most
        recently saved complete one (the pointer may lag one save behind after a crash between the rename and the
        pointer update; that checkpoint is complete too), else None."""
        pointer = self.directory / LATEST
        if pointer.is_file():
            with contextlib.suppress(OSError, UnicodeDecodeError):
                name = pointer.read_text(encoding="utf-8").strip()
                cand = self.directory / name
                if _STEP_RE.match(name) and cand.is_dir() and self._problem(cand, hash_files=False) is None:
                    return cand
        found = self.checkpoints()
        return found[-1] if found else None

    @staticmethod
    def _read_manifest(path: Path) -> dict[str, Any]:
        return json.loads((path / MANIFEST).read_text(encoding="utf-8"))

    def latest_step(self) -> int | None:
        path = self.latest()
        return None if path is None else step_of(path)

    def _problem(self, path: Path, hash_files: bool) -> str | None:
        """Why `path` is not a complete checkpoint, or None when it is."""
        try:
            manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return f"{path} has no {MANIFEST} (an incomplete or foreign directory)"
        except (OSError, ValueError) as e:
            return f"{path / MANIFEST} is unreadable: {e}"
        if manifest.get("format") != FORMAT or not isinstance(manifest.get("files"), dict):
            return f"{path / MANIFEST} is not a kexaone checkpoint manifest"
        for key, info in manifest["files"].items():
            f = path / info["file"]
            if not f.is_file():
                return f"{path} is missing {info['file']} (entry {key!r})"
            size = f.stat().st_size
            if size != info["bytes"]:
                return f"{f} has {size} bytes, the manifest says {info['bytes']} (truncated or overwritten)"
            if hash_files and _sha256(f) != info["sha256"]:
                return f"{f} does not match its sha256 in the manifest (corrupted on disk)"
        shard_info = manifest.get("sharded")
        if shard_info is not None:  # shard files are checked by size (hashing hundreds of GB per save is too slow)
            for fname, nbytes in shard_info["files"].items():
                f = path / shard_info["dir"] / fname
                if not f.is_file():
                    return f"{path} is missing the shard {shard_info['dir']}/{fname}"
                if f.stat().st_size != nbytes:
                    return f"{f} has {f.stat().st_size} bytes, the manifest says {nbytes} (truncated)"
        return None

    # ---------------------------------------------------------------- load
    def load(self, path: str | os.PathLike | None = None, map_location: str | torch.device = "cpu",
             verify: bool = True) -> dict[str, Any]:
        """Read a checkpoint (default: `latest()`) back into the dict that was saved.

        Everything is read with weights_only=True. `verify` checks each file's sha256 first. Raises
        FileNotFoundError when there is no checkpoint, CheckpointError when it is incomplete or corrupt."""
        if path is None:
            path = self.latest()
            if path is None:
                raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        path = Path(path)
        if not path.is_dir():
            raise FileNotFoundError(f"checkpoint directory {path} does not exist")
        problem = self._problem(path, hash_files=verify)
        if problem is not None:
            raise CheckpointError(problem)
        manifest = self._read_manifest(path)
        loaded: dict[str, Any] = dict(manifest.get("values", {}))
        for key, info in manifest["files"].items():
            f = path / info["file"]
            if f.suffix == ".safetensors":
                from safetensors.torch import load_file

                loaded[key] = load_file(str(f), device=str(map_location))
            else:
                loaded[key] = torch.load(f, map_location=map_location, weights_only=True)
        order = manifest.get("order", list(loaded))
        return {key: loaded[key] for key in order}

    def metadata(self, path: str | os.PathLike | None = None) -> dict[str, Any]:
        """The manifest of a checkpoint (step, files, user metadata) without loading tensors."""
        path = self.latest() if path is None else Path(path)
        if path is None:
            raise FileNotFoundError(f"no complete checkpoint in {self.directory}")
        return self._read_manifest(Path(path))

    # ---------------------------------------------------------------- prune
    def _prune(self, protect: Path) -> None:
        """Delete all but the newest `keep` complete checkpoints (never `protect`) and dead writers' temp dirs."""
        for p in self.directory.iterdir():
            if p.is_dir() and p.name.startswith(_TMP_PREFIX):
                m = re.search(r"-(\d+)-", p.name[len(_TMP_PREFIX):])
                if m and not _pid_alive(int(m.group(1))):
                    shutil.rmtree(p, ignore_errors=True)
        if self.keep is None:
            return
        complete = self.checkpoints()
        pointed = self.latest()
        for p in complete[:-self.keep]:
            if p.resolve() != protect.resolve() and (pointed is None or p.resolve() != pointed.resolve()):
                shutil.rmtree(p, ignore_errors=True)


@contextlib.contextmanager
def _single_process_dcp_quiet() -> Any:
    """DCP warns on every single-process save/load ("assuming the intent is to ... in a single process"): that is
    the intent here (a resume on one process), so that warning is silenced."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*assuming the intent is to (load|save) in a single process")
        yield


# --------------------------------------------------------------------------------------------------------- RNG
def capture_rng_state() -> dict[str, Any]:
    """Generator states of Python's `random`, numpy's global RNG (when numpy is installed), torch CPU and every
    CUDA device (when CUDA is initialised), as plain objects torch.load(weights_only=True) accepts."""
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state()}
    try:
        import numpy as np
    except ImportError:  # pragma: no cover - numpy is a dependency in practice
        np = None
    if np is not None:
        name, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of `capture_rng_state`: afterwards every generator continues exactly where it was captured."""
    if "python" in state:
        py = state["python"]
        # weights_only loading may turn the inner tuple into a list; random.setstate needs tuples.
        random.setstate((py[0], tuple(py[1]), py[2]))
    if "torch" in state:
        torch.set_rng_state(state["torch"].to("cpu", torch.uint8))
    if "numpy" in state:
        import numpy as np

        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"],
                             s["cached_gaussian"]))
    if "cuda" in state and torch.cuda.is_available():
        cuda_states = list(state["cuda"])
        if len(cuda_states) != torch.cuda.device_count():
            raise ValueError(f"the saved RNG state has {len(cuda_states)} CUDA devices, this machine has "
                             f"{torch.cuda.device_count()}")
        torch.cuda.set_rng_state_all(cuda_states)
