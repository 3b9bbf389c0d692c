"""Induction / key-value recall probes (kexaone.eval.induction): scores, oracle, trainer callback, onset."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from kexaone.config import KExaoneConfig
from kexaone.eval.induction import (
    build_probe,
    induction_callback,
    onset_step,
    plot_probe_curves,
    probe_onsets,
    score_probe,
)
from kexaone.model.transformer import KExaoneForCausalLM

V = 512


class CopyOracle(torch.nn.Module):
    """Logits that copy: at position t, the token that followed the previous occurrence of ids[t] (a perfect
    induction head); uniform where ids[t] has not occurred before. Written as a plain loop, independently of the
    probe's construction."""

    def __init__(self, vocab: int):
        super().__init__()
        self.vocab = vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids, compute_mtp=None, **_):
        B, T = input_ids.shape
        logits = torch.zeros(B, T, self.vocab)
        for b in range(B):
            row = input_ids[b].tolist()
            for t in range(T):
                prev = [j for j in range(t) if row[j] == row[t]]
                if prev:
                    logits[b, t, row[prev[-1] + 1]] = 30.0
        return SimpleNamespace(logits=logits)


def tiny(seed=0):
    torch.manual_seed(seed)
    return KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(vocab_size=V))


@pytest.fixture(scope="module")
def probe():
    return build_probe(V, seed=0, n=16)


def test_probe_sets_are_fixed_and_well_formed(probe):
    again = build_probe(V, seed=0, n=16)
    assert torch.equal(probe.induction.ids, again.induction.ids)
    assert torch.equal(probe.recall.mask, again.recall.mask)
    assert not torch.equal(probe.induction.ids, build_probe(V, seed=1, n=16).induction.ids)
    assert probe.recall.chance == pytest.approx(1 / 16)
    assert probe.induction.chance == pytest.approx(1 / (V - 16))
    for ps in probe.sets():
        assert ps.ids.min() >= 16 and ps.ids.max() < V
        assert not ps.mask[:, 0].any() and ps.mask.sum(1).min() >= 9
    with pytest.raises(ValueError, match="id_range"):
        build_probe(V, id_range=(0, 20), n_pairs=16)


def test_untrained_model_is_at_chance_and_oracle_is_perfect(probe):
    m = tiny()
    m.train()
    s = score_probe(m, probe)
    assert m.training  # mode restored
    for name in ("induction", "recall"):
        assert 0.0 <= s[f"{name}_acc"] <= 1.0
        assert s[f"{name}_acc"] <= 0.05  # far below anything a copying model scores
        assert abs(s[f"{name}_loss"] - math.log(V)) < 1.0  # about uniform over the vocabulary
    assert s["recall_acc"] <= probe.recall.chance
    o = score_probe(CopyOracle(V), probe)
    assert o["induction_acc"] == 1.0 and o["recall_acc"] == 1.0
    assert o["induction_loss"] < 1e-6 and o["recall_loss"] < 1e-6


def test_a_partly_copying_model_scores_in_between(probe):
    # Copies only at positions before `cut` (the recall rows' queries run from 32 to 64): the score must fall
    # strictly between 0 and 1 and equal the share of scored targets those positions predict.
    cut = 48

    class Part(CopyOracle):
        def forward(self, input_ids, **kw):
            out = super().forward(input_ids)
            out.logits[:, cut:] = 0.0
            out.logits[:, cut:, 0] = 30.0  # id 0 is never a probe token
            return out

    s = score_probe(Part(V), probe)
    want = float(probe.recall.mask[:, 1:cut + 1].sum()) / float(probe.recall.mask.sum())
    assert s["recall_acc"] == pytest.approx(want)
    assert 0 < s["recall_acc"] < 1


def test_onset_step_on_synthetic_curves():
    steps = list(range(0, 1100, 100))
    flat = [0.06, 0.07, 0.05, 0.06, 0.07, 0.06, 0.05, 0.06, 0.07, 0.06, 0.06]
    assert onset_step(steps, flat, chance=0.0625) is None  # never rises
    rise = [0.06, 0.06, 0.07, 0.06, 0.10, 0.30, 0.70, 0.85, 0.90, 0.92, 0.91]
    # final 0.915, threshold 0.0625 + 0.5 * 0.8525 = 0.489: first crossed (and held) at step 600
    assert onset_step(steps, rise, chance=0.0625) == 600
    assert onset_step(steps, rise, chance=0.0625, fraction=0.2) == 500  # threshold 0.233
    spike = [0.06, 0.60, 0.06, 0.06, 0.06, 0.06, 0.40, 0.80, 0.85, 0.90, 0.90]
    assert onset_step(steps, spike, chance=0.0625) == 700  # the lone spike at 100 is not confirmed
    assert onset_step(steps, spike, chance=0.0625, confirm=1) == 100
    with pytest.raises(ValueError, match="differ in length"):
        onset_step([1, 2], [0.1], chance=0.0)
    recs = [{"kind": "probe", "step": s, "induction_acc": r, "recall_acc": f} for s, r, f in zip(steps, rise, flat)]
    assert probe_onsets(recs) == {"induction": 600, "recall": None}


def test_callback_logs_probe_records_during_training(probe, tmp_path):
    from kexaone.data.synthetic.recall import mqar_tokens
    from kexaone.train.config import TrainConfig
    from kexaone.train.metrics import read_metrics
    from kexaone.train.trainer import Trainer

    import random

    rng = random.Random(0)

    def batches():
        while True:
            rows = [mqar_tokens(rng, 8, (16, 200), (200, V))[0] for _ in range(4)]
            x = torch.tensor(rows)
            yield {"input_ids": x, "labels": x.clone()}

    cb = induction_callback(probe, every=2)
    cfg = TrainConfig(max_steps=5, seq_len=32, batch_size=4, out=str(tmp_path), progress=False, tensorboard=False,
                      eval_every=0, save_every=0, precision="fp32", lr=3e-3, warmup_steps=1, peak_flops=1e12)
    Trainer(tiny(), None, batches(), cfg, callbacks=[cb]).fit()
    recs = read_metrics(tmp_path / "metrics.jsonl", kind="probe")
    assert [r["step"] for r in recs] == [2, 4, 5]  # every 2 steps and the last
    assert recs == cb.history
    assert all(0 <= r["recall_acc"] <= 1 and r["tokens"] == r["step"] * 4 * 32 for r in recs)
    png = plot_probe_curves(recs, tmp_path / "probe.png", title="tiny")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="every"):
        induction_callback(probe, every=0)


def test_probe_for_tokenizer_skips_special_ids():
    from kexaone.eval.induction import probe_for_tokenizer

    tok = SimpleNamespace(vocab_size=300, special_ids={"<|endoftext|>": 0, "<|pad|>": 1, "<|user|>": 7})
    p = probe_for_tokenizer(tok, n=8)
    for ps in p.sets():
        assert int(ps.ids.min()) >= 8 and int(ps.ids.max()) < 300
    assert p.induction.chance == pytest.approx(1 / 292)


def test_speedrun_probe_callback_follows_the_budget():
    from kexaone.pipeline.budgets import get_budget
    from kexaone.pipeline.corpus import induction_probe_callback

    tok = SimpleNamespace(vocab_size=V, special_ids={"<|endoftext|>": 0})
    assert induction_probe_callback(tok, get_budget("tiny").replace(probe_every=0)) is None
    cb = induction_probe_callback(tok, get_budget("tiny"))
    trainer = SimpleNamespace(raw_model=CopyOracle(V), total_steps=25, logger=None)
    for step in range(1, 26):
        cb(trainer, step, {})
    assert [r["step"] for r in cb.history] == [10, 20, 25]  # tiny: every 10 steps, and the last
    assert all(r["induction_acc"] == 1.0 and r["recall_acc"] == 1.0 for r in cb.history)
    assert "documents_acc" not in cb.history[0]  # a tokenizer that cannot give offsets gets the token-id probes


def test_documents_probe_scores_held_out_retrieval_documents_answer_tokens():
    from kexaone.data.synthetic.recall import answer_token_mask, dense_recall_documents
    from kexaone.eval.induction import DOCUMENTS_SEED, probe_for_tokenizer
    from kexaone.tokenizer.superbpe import train_superbpe

    docs = [d.text for _, d in zip(range(300), dense_recall_documents(seed=0))]
    tok = train_superbpe(iter(docs), 400, workers=1, show_progress=False)
    p = probe_for_tokenizer(tok, documents=True, n=6)
    assert [ps.name for ps in p.sets()] == ["induction", "recall", "documents"]
    d = p.documents
    assert d.ids.shape[0] == 6 and d.chance is None
    # Row r is the r-th held-out document (never the training stream's seed 0), its answer tokens masked in.
    for r, doc in zip(range(6), dense_recall_documents(seed=DOCUMENTS_SEED)):
        ids, mask = answer_token_mask(tok, doc)
        n = min(len(ids), d.ids.shape[1])
        assert d.ids[r, :n].tolist() == ids[:n]
        assert d.mask[r, 1:n].tolist() == mask[1:n] and not bool(d.mask[r, n:].any())
        assert bool(d.mask[r].any())
    assert probe_for_tokenizer(tok, n=6).documents is None  # off unless asked for
    s = score_probe(tiny(), p)
    assert set(s) == {f"{k}_{m}" for k in ("induction", "recall", "documents") for m in ("acc", "loss")}
    assert 0 <= s["documents_acc"] <= 1 and math.isfinite(s["documents_loss"])


def test_documents_onset_is_measured_from_the_curves_first_score(tmp_path):
    steps = [0, 100, 200, 300, 400, 500]
    docs = [0.12, 0.13, 0.12, 0.55, 0.80, 0.82]  # the format's tokens give 0.12 without copying
    flat = [0.0] * 6
    recs = [{"kind": "probe", "step": s, "induction_acc": f, "recall_acc": f, "documents_acc": v}
            for s, v, f in zip(steps, docs, flat)]
    # baseline 0.12, final 0.81, threshold 0.465: crossed and held from step 300
    assert probe_onsets(recs) == {"induction": None, "recall": None, "documents": 300}
    assert "documents" not in probe_onsets([{k: v for k, v in r.items() if k != "documents_acc"} for r in recs])
    png = plot_probe_curves(recs, tmp_path / "p.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
