"""Host reads in a training step do not grow with depth: on an accelerator every read of a device value on the host
(`.item()`, `int(t)`, `.tolist()`, `nonzero` and other data-dependent shapes) stalls the stream, so a step must
not do one per layer. Counted here on CPU by intercepting the aten ops those reads dispatch to, during one
Trainer.train_step on packed document rows, for the same tiny model at 4 and at 8 layers."""

from __future__ import annotations

import collections
import traceback

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from kexaone.train.trainer import Trainer
from test_trainer import cfg, corpus, loader, tiny_model

# aten ops whose result needs the device's values on the host
HOST_READS = {"_local_scalar_dense", "nonzero", "masked_select", "unique", "_unique2", "unique_consecutive",
              "unique_dim", "repeat_interleave", "bincount", "equal", "is_nonzero", "allclose"}


class CountHostReads(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.where: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._overloadpacket.__name__
        if name in HOST_READS:
            ours = [f for f in traceback.extract_stack() if "/kexaone/" in f.filename]
            self.where[f"{name} at {ours[-1].filename.rsplit('/kexaone/', 1)[-1]}:{ours[-1].lineno}"
                       if ours else name] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    from kexaone.data.shards import build_token_shards
    from kexaone.tokenizer.superbpe import train_superbpe

    tok = train_superbpe(iter(corpus(1500, seed=1)), 512, workers=1, show_progress=False)
    d = tmp_path_factory.mktemp("data")
    (d / "train.txt").write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    return tok, build_token_shards(str(d / "train.txt"), tok, d / "cache", num_workers=1)


def host_reads_of_one_step(tok, shards, tmp_path, layers: int) -> collections.Counter[str]:
    torch.set_num_threads(1)
    model = tiny_model(tok, num_hidden_layers=layers)
    t = Trainer(model, tok, loader(shards), cfg(tmp_path / f"L{layers}", max_steps=3))
    batches = iter(t.data)
    t.train_step(batches)  # first step: optimizer state is created
    with CountHostReads() as c:
        t.train_step(batches)
    return c.where


def test_host_reads_per_training_step_do_not_grow_with_layers(shards, tmp_path):
    tok, sh = shards
    four, eight = (host_reads_of_one_step(tok, sh, tmp_path, n) for n in (4, 8))
    assert four == eight, f"4 layers: {dict(four)}\n8 layers: {dict(eight)}"
    # What is left is per step or per forward: id-range checks, target counts, the chunked loss's kept rows, the
    # gradient norm, and one read of the document boundaries per forward (main stack and MTP layer).
    assert sum(four.values()) <= 12, dict(four)
    assert any("attention.py" in k for k in four)  # the packed rows did take the document path
