"""The data of `kexaone pref`: G responses per prompt sampled once from the initial policy and cached in a JSONL
file, and the stream of GROUPER micro-batches the trainer consumes.

Cache file (`--samples`, default `<out>/samples.jsonl`): a first line `{"kind": "meta", "key": ...}` whose key
hashes what the samples depend on (the initial checkpoint's files, the prompts, G, sampling settings, seed), then one
line per prompt `{"id", "responses": [{"prompt_ids", "tokens", "logprobs", "text", "finish_reason"}, ...]}`. A
cache whose key matches is reused as is (no sampling); another key is an error naming the file (delete it or point
`--samples` elsewhere), so stale responses are never trained on by accident.

`PrefBatches` shuffles the scored groups each epoch and serves, per optimizer step, the responses of
`prompts_per_step` groups as `micro_batches` micro-batches (kexaone.rl.policy_batch); groups with all-equal rewards
stay in (advantage 0, counted in N, as GROUPER's equation has it).
What this module does not do: score responses or compute advantages (kexaone.rl.pref_cli).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kexaone.rl.rollout import Rollout, dumps_rollout, loads_rollout

__all__ = ["samples_key", "load_or_sample", "PrefBatches"]


def samples_key(init_from: str | Path, rows: Sequence[dict], group_size: int, sampling: dict, seed: int) -> str:
    """Identity of a sample set: the checkpoint's files (name, size, mtime), the prompts, G, sampling and seed."""
    h = hashlib.sha256()
    init = Path(init_from)
    for f in sorted(init.glob("*")):
        if f.is_file():
            st = f.stat()
            h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}|".encode())
    h.update(json.dumps([r["prompt"] for r in rows], ensure_ascii=False, sort_keys=True).encode())
    h.update(json.dumps({"G": group_size, "seed": seed, **sampling}, sort_keys=True).encode())
    return h.hexdigest()[:32]


def load_or_sample(path: str | Path, key: str, rows: Sequence[dict], sampler: Any, group_size: int,
                   seed: int) -> tuple[list[list[Rollout]], bool]:
    """(responses [P][G], reused): the cached responses when `path` holds this key, else sampled and written
    (atomically)."""
    from kexaone.utils.io import atomic_write_text

    path = Path(path)
    if path.is_file():
        lines = [ln for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
        try:
            meta = json.loads(lines[0]) if lines else {}
        except json.JSONDecodeError:
            meta = {}
        if meta.get("kind") != "meta" or meta.get("key") != key:
            raise ValueError(f"{path} holds responses sampled for other prompts, model or settings (key "
                             f"{meta.get('key')!r}, this run {key!r}); delete it or give another --samples path")
        by_id = {}
        for ln in lines[1:]:
            rec = json.loads(ln)
            by_id[rec["id"]] = [loads_rollout(json.dumps(r)) for r in rec["responses"]]
        return [by_id[str(r["id"])] for r in rows], True
    groups = sampler.sample(rows, group_size, seed=seed)
    text = [json.dumps({"kind": "meta", "key": key, "group_size": group_size, "n_prompts": len(rows)})]
    text += [json.dumps({"id": str(r["id"]), "responses": [json.loads(dumps_rollout(x)) for x in g]},
                        ensure_ascii=False) for r, g in zip(rows, groups)]
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, "\n".join(text) + "\n")
    return groups, False


class PrefBatches:
    """Endless GROUPER micro-batches over the scored groups (see the module docstring)."""

    def __init__(self, groups: Sequence[Sequence[Rollout]], advantages: Sequence[Sequence[float]], *,
                 prompts_per_step: int, micro_batches: int, pad_id: int, seed: int = 0) -> None:
        if not groups:
            raise ValueError("no groups to train on")
        self.groups, self.adv = list(groups), [list(a) for a in advantages]
        self.per_step, self.micro, self.pad_id, self.seed = min(prompts_per_step, len(groups)), micro_batches, \
            pad_id, seed
        self.epoch = 0
        self._order: list[int] = []

    def state_dict(self) -> dict:
        return {"epoch": self.epoch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state.get("epoch", 0))

    def _take(self) -> list[int]:
        out = []
        while len(out) < self.per_step:
            if not self._order:
                order = list(range(len(self.groups)))
                random.Random(f"pref|{self.seed}|{self.epoch}").shuffle(order)
                self._order, self.epoch = order, self.epoch + 1
            out.append(self._order.pop())
        return out

    def __iter__(self) -> Iterator[dict]:
        from kexaone.rl.policy_batch import Sample, make_microbatches

        while True:
            samples = [Sample(r.prompt_ids, r.tokens, r.logprobs, self.adv[p][g])
                       for p in self._take() for g, r in enumerate(self.groups[p])]
            yield from make_microbatches(samples, self.micro, self.pad_id)
