"""The training loop on the tiny preset: loss composition, gradient accumulation, the expert-bias update and its
load files, held-out evaluation (bits per byte), NaN/inf skipping and divergence stop with the last good checkpoint
intact, bad token ids, FP8-emulated training tracking bf16. CPU, seeded, seconds each."""

from __future__ import annotations

import math
import random
import warnings

import numpy as np
import pytest
import torch

from kexaone.config import KExaoneConfig
from kexaone.model.balance import moe_layers
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.train.checkpoint import CheckpointManager
from kexaone.train.config import TrainConfig
from kexaone.train.metrics import read_expert_loads, read_metrics
from kexaone.train.evaluation import eval_set_from_shards
from kexaone.train.trainer import Trainer, TrainingDiverged

LN2 = math.log(2.0)

SEQ, BATCH = 32, 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Two OpenMP threads on a loaded 2-core machine are 10-100x slower than one for these tiny matmuls.
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def corpus(n: int = 800, seed: int = 0) -> list[str]:
    """Learnable text: facts about a small made-up world plus counting, so a tiny model's loss falls fast."""
    r = random.Random(seed)
    names = ["Arin", "Bora", "Cyan", "Dema", "Elio", "Fenn", "Gala", "Hiro"]
    cities = ["Norvik", "Solana", "Tarsis", "Umber", "Valen", "Wexford"]
    colors = ["red", "blue", "green", "amber", "violet"]
    docs = []
    for _ in range(n):
        a, c, k = r.choice(names), r.choice(cities), r.choice(colors)
        i = r.randint(1, 6)
        docs.append(f"{a} lives in {c}. The house of {a} is {k}. {a} counts: "
                    + " ".join(str(i + j) for j in range(5)) + ".")
    return docs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    from kexaone.tokenizer.superbpe import train_superbpe

    return train_superbpe(iter(corpus(1500, seed=1)), 512, workers=1, show_progress=False)


@pytest.fixture(scope="module")
def shards(tok, tmp_path_factory):
    from kexaone.data.shards import build_token_shards

    d = tmp_path_factory.mktemp("data")
    (d / "train.txt").write_text("\n".join(corpus()) + "\n", encoding="utf-8")
    return build_token_shards(str(d / "train.txt"), tok, d / "cache", num_workers=1)


def tiny_model(tok, seed: int = 0, **changes) -> KExaoneForCausalLM:
    torch.manual_seed(seed)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, **changes)
    return KExaoneForCausalLM(cfg)


def loader(shards, batch: int = BATCH, seed: int = 0):
    from kexaone.data.packing import PackedBatches

    return PackedBatches([(shards, 1.0)], SEQ, batch, seed=seed, heldout=0.05)


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(max_steps=6, seq_len=SEQ, batch_size=BATCH, out=str(tmp_path), progress=False, tensorboard=False,
                eval_every=0, save_every=0, precision="fp32", lr=3e-3, warmup_steps=1, peak_flops=1e12)
    base.update(kw)
    return TrainConfig(**base)


def params(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------- tests
def test_loss_is_ce_plus_weighted_mtp_and_aux(tok, shards, tmp_path):
    m = tiny_model(tok)
    t = Trainer(m, tok, loader(shards), cfg(tmp_path, max_steps=2, mtp_loss_weight=0.3, aux_loss_coef=0.01))
    res = t.fit()
    for rec in res.history:
        assert rec["loss"] == pytest.approx(rec["ce"] + 0.3 * rec["mtp"] + 0.01 * rec["aux"], rel=1e-5)
        assert rec["mtp"] > 0 and rec["aux"] > 0
    assert res.history[0]["ce"] == pytest.approx(math.log(tok.vocab_size), abs=0.5)  # untrained: ~uniform
    # Without MTP weight the MTP head is not even run.
    t2 = Trainer(tiny_model(tok), tok, loader(shards), cfg(tmp_path / "b", max_steps=1, mtp_loss_weight=0.0))
    assert "mtp" not in t2.fit().history[0]


def test_loss_falls_and_outputs_are_written(tok, shards, tmp_path):
    heldout = [(shards, shards.split_indices(0.05)[1])]
    ev = eval_set_from_shards(heldout, SEQ, BATCH, max_rows=4 * BATCH)
    m = tiny_model(tok)
    t = Trainer(m, tok, loader(shards), cfg(tmp_path, max_steps=30, eval_every=15, save_every=10), eval_set=ev)
    res = t.fit()
    losses = [r["loss"] for r in res.history]
    assert np.mean(losses[-5:]) < losses[0] - 1.5, losses  # the structured corpus is quickly learnable
    recs = read_metrics(tmp_path / "metrics.jsonl")
    kinds = [r["kind"] for r in recs]
    assert kinds[0] == "config" and kinds.count("train") == 30 and kinds.count("eval") == 2  # step 15 + the end
    train = [r for r in recs if r["kind"] == "train"]
    assert all(r["tok_per_s"] > 0 and 0 < r["mfu"] < 1 for r in train)
    assert [r["tokens"] for r in train[:2]] == [SEQ * BATCH, 2 * SEQ * BATCH]
    # MaxVio per MoE layer, and one [L, E] load matrix per logged step.
    n_moe = len(moe_layers(m))
    assert all(len(r["max_vio_layers"]) == n_moe for r in train)
    steps, loads = read_expert_loads(tmp_path)
    assert steps == list(range(1, 31)) and loads.shape == (30, n_moe, m.config.num_experts)
    # Every routed (token, slot) pair is counted once: B*T*top_k per layer per step.
    assert np.all(loads.sum(-1) == SEQ * BATCH * m.config.num_experts_per_tok)
    # Evaluation: bits per byte = summed nats / ln 2 / bytes of the scored documents; it matches res.
    evals = [r for r in recs if r["kind"] == "eval"]
    assert evals[-1]["loss"] < evals[0]["loss"] + 1e-6
    assert evals[-1]["bpb"] == pytest.approx(evals[-1]["loss"] * ev.n_tokens / LN2 / ev.n_bytes)
    assert res.eval_loss == evals[-1]["loss"] and res.eval_bpb == evals[-1]["bpb"]
    # Checkpoints at 10, 20, 30 (keep=3), holding the step and expert biases (buffers in the model state).
    mgr = CheckpointManager(tmp_path / "checkpoints")
    assert [p.name for p in mgr.checkpoints()] == ["step_00000010", "step_00000020", "step_00000030"]
    state = mgr.load()
    assert state["step"] == 30
    key = next(k for k in state["model"] if k.endswith("e_score_correction_bias"))
    assert torch.equal(state["model"][key], m.state_dict()[key])


def test_expert_bias_update_runs_after_each_step(tok, shards, tmp_path):
    m = tiny_model(tok)
    t = Trainer(m, tok, loader(shards), cfg(tmp_path, max_steps=3, bias_update_rate=1e-2))
    t.fit()
    for layer in moe_layers(m):
        b = layer.gate.e_score_correction_bias
        assert b.abs().max() > 0  # moved
        assert abs(float(b.sum())) < 1e-5  # mean-free updates: the biases do not drift as a whole
        # With rate r, after 3 steps every bias is a sum of 3 terms from {-r, 0, r} minus means: |b| <= 6r.
        assert b.abs().max() <= 6 * 1e-2 + 1e-7
        assert int(layer.tokens_per_expert.sum()) == 0  # counters reset by the update
    m2 = tiny_model(tok)
    Trainer(m2, tok, loader(shards), cfg(tmp_path / "off", max_steps=3, bias_update_rate=0.0)).fit()
    assert all(float(l.gate.e_score_correction_bias.abs().max()) == 0.0 for l in moe_layers(m2))


def test_adamw_groups_follow_the_schedule_at_their_own_lr(tok, shards, tmp_path):
    # Embeddings, head, router and norms (the AdamW groups) at adamw_lr, hidden matrices at lr; both follow the
    # same WSD shape, and the logged lr is the schedule's (the Muon groups'), not whichever group comes first.
    m = tiny_model(tok)
    t = Trainer(m, tok, loader(shards), cfg(tmp_path, max_steps=4, lr=1e-3, adamw_lr=1e-2, warmup_steps=0,
                                            decay_fraction=0.5))
    t.fit()
    by_kind: dict[str, set] = {}
    for g in t.optimizer.param_groups:
        by_kind.setdefault(g["kind"], set()).add(round(g["initial_lr"], 12))
    assert by_kind == {"muon": {1e-3}, "adamw": {1e-2}}
    ratios = {round(g["lr"] / g["initial_lr"], 9) for g in t.optimizer.param_groups}
    assert len(ratios) == 1  # one schedule factor for every group
    lrs = [r["lr"] for r in read_metrics(tmp_path / "metrics.jsonl") if r.get("kind") == "train"]
    assert lrs[0] == pytest.approx(1e-3)


def test_gradient_accumulation_matches_a_big_batch(tok, shards, tmp_path):
    """2 micro-batches of 2 rows == 1 batch of the same 4 rows (packed rows: every target counts, so the mean of
    micro-batch means equals the batch mean); fp32, so only summation order differs."""
    from kexaone.data.packing import PackedBatches

    class Halves:
        def __init__(self):
            self.inner = PackedBatches([(shards, 1.0)], SEQ, 4, seed=0, heldout=0.05)
            self.buf: list = []

        def __iter__(self):
            return self

        def __next__(self):
            if not self.buf:
                b = next(self.inner)
                self.buf = [{k: v[:2] for k, v in b.items()}, {k: v[2:] for k, v in b.items()}]
            return self.buf.pop(0)

    m1, m2 = tiny_model(tok), tiny_model(tok)
    r1 = Trainer(m1, tok, loader(shards, 4), cfg(tmp_path / "a", max_steps=4, batch_size=4)).fit()
    r2 = Trainer(m2, tok, Halves(), cfg(tmp_path / "b", max_steps=4, batch_size=2, grad_accum=2)).fit()
    for a, b in zip(r1.history, r2.history):
        assert a["loss"] == pytest.approx(b["loss"], abs=2e-5)
        assert a["tokens"] == b["tokens"]
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, atol=2e-4, rtol=1e-3, msg=k)


def test_nan_steps_are_skipped_then_the_run_stops(tok, shards, tmp_path):
    m = tiny_model(tok)
    c = cfg(tmp_path, max_steps=20, save_every=2, max_bad_steps=3)
    t = Trainer(m, tok, loader(shards), c)
    real_loss = t.objective.loss
    bad_steps = {3} | set(range(6, 20))  # one isolated bad step, then a run of bad ones
    snapshots = {}

    def forward(model, batch):
        values, metrics = real_loss(model, batch)
        if t.step + 1 in bad_steps:
            values["ce"] = values["ce"] * float("nan")
        return values, metrics

    def snap(trainer, step, record):
        snapshots[step] = params(trainer.raw_model)

    t.objective.loss = forward
    t.callbacks.append(snap)
    with warnings.catch_warnings(record=True) as caught, pytest.raises(TrainingDiverged, match="3 consecutive"):
        warnings.simplefilter("always")
        t.fit()
    assert sum("non-finite loss" in str(w.message) for w in caught) == 4  # step 3, then 6, 7, 8
    # A skipped step leaves every weight (and expert bias) exactly as it was.
    for skipped in (3, 6, 7):
        prev = snapshots[skipped - 1]
        assert all(torch.equal(prev[k], v) for k, v in snapshots[skipped].items())
    assert not all(torch.equal(snapshots[1][k], v) for k, v in snapshots[2].items())  # good steps do move
    assert all(int(l.tokens_per_expert.sum()) == 0 for l in moe_layers(m))
    # The last good checkpoint (step 6: taken after the step-6 skip; step 8 is never saved) is intact and loads.
    recs = read_metrics(tmp_path / "metrics.jsonl", kind="train")
    assert [r["step"] for r in recs if r.get("skipped")] == [3, 6, 7, 8]
    mgr = CheckpointManager(tmp_path / "checkpoints")
    assert mgr.latest().name == "step_00000006"
    state = mgr.load()
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert all(torch.equal(state["model"][k], snapshots[6][k]) for k in state["model"])


def test_eval_without_byte_counts_has_a_loss_and_no_bpb(tok, shards, tmp_path, capsys):
    """A held-out set that does not know its bytes (SFT's conversations, scored on the assistant tokens only) gives
    a held-out loss and no bits per byte: None in the result, absent from the eval records and the closing line,
    never NaN. The progress bar carries the run's label, not "pretrain"."""
    import dataclasses

    from kexaone.train.evaluation import EvalSet
    from kexaone.train.run import StageResult, report

    ev = eval_set_from_shards([(shards, shards.split_indices(0.05)[1])], SEQ, BATCH, max_rows=BATCH)
    no_bytes = EvalSet(ev.batches, ev.n_tokens, 0)
    t = Trainer(tiny_model(tok), tok, loader(shards), cfg(tmp_path, max_steps=1, progress=True), eval_set=no_bytes,
                label="sft")
    res = t.fit()
    assert t.label == "sft" and math.isfinite(res.eval_loss) and res.eval_bpb is None
    evals = [r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "eval"]
    assert evals and "bpb" not in evals[-1] and math.isfinite(evals[-1]["loss"]) and math.isfinite(evals[-1]["ppl"])
    bar = capsys.readouterr().err
    assert "sft" in bar and "pretrain" not in bar
    # The default label is the objective's name: pre-training's for the default objective.
    assert Trainer(tiny_model(tok), tok, loader(shards), cfg(tmp_path / "p", max_steps=1)).label == "pretrain"
    fields = {f.name: None for f in dataclasses.fields(StageResult)}
    stage = StageResult(**{**fields, "steps": 1, "tokens": 128, "final_loss": 1.0, "eval_loss": res.eval_loss,
                           "interrupted": False, "metrics_path": tmp_path / "metrics.jsonl", "rank": 0})
    assert report(stage) == 0
    line = capsys.readouterr().out
    assert f"held-out loss {res.eval_loss:.4f}" in line and "bits/byte" not in line and "nan" not in line


def test_token_ids_beyond_the_vocabulary_are_a_clear_error(tok, tmp_path):
    m = tiny_model(tok)
    bad = torch.full((2, SEQ), tok.vocab_size + 5, dtype=torch.long)
    data = iter([{"input_ids": bad, "labels": bad.clone()}])
    with pytest.raises(ValueError, match=f"token id {tok.vocab_size + 5} outside the model's vocabulary"):
        Trainer(m, tok, data, cfg(tmp_path, max_steps=1, batch_size=2)).fit()


def test_data_running_out_is_a_clear_error(tok, tmp_path):
    ids = torch.zeros((2, SEQ), dtype=torch.long)
    data = [{"input_ids": ids, "labels": ids}]
    with pytest.raises(ValueError, match="ran out at step 2 of 3"):
        Trainer(tiny_model(tok), tok, data, cfg(tmp_path, max_steps=3, batch_size=2)).fit()


def test_fp8_emulation_tracks_bf16(tok, shards, tmp_path):
    """Same seed, data and recipe; FP8 (e4m3 forward, e5m2 gradients, per-tensor scales) vs bf16 autocast.
    Tolerance: the per-step loss gap stays below 0.05 nats and the mean gap over the last 5 steps below 0.02 nats,
    while the loss itself falls by > 2 nats (measured over 20 steps: gaps <= 0.01 nats during a ~4-nat fall).
    Why: e4m3 keeps 3 mantissa bits (relative rounding error up to 2^-4), bf16 7 bits; the per-element errors are
    large but unbiased, so over a matmul's reduction they average out and the curves differ by far less than the
    training progress, whereas a systematic bug (wrong scale, lost gradient) shows up as a gap of the size of the
    progress itself."""
    curves = {}
    for precision in ("bf16", "fp8"):
        m = tiny_model(tok)
        res = Trainer(m, tok, loader(shards), cfg(tmp_path / precision, max_steps=20, precision=precision)).fit()
        curves[precision] = np.array([r["loss"] for r in res.history])
        if precision == "fp8":
            from kexaone.train.fp8 import fp8_module_names

            assert fp8_module_names(m)  # the swap happened
    b, f = curves["bf16"], curves["fp8"]
    assert b[0] - b[-5:].mean() > 2.0
    assert np.max(np.abs(b - f)) < 0.05, np.abs(b - f).round(3)
    assert abs(b[-5:].mean() - f[-5:].mean()) < 0.02


def test_first_signal_asks_to_stop_a_second_one_stops_at_once(tok, tmp_path):
    import os
    import signal

    t = Trainer(tiny_model(tok), tok, iter(()), cfg(tmp_path, max_steps=1))
    old = t._install_signal_handlers()
    try:
        with pytest.warns(UserWarning, match="finishing the current step"):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):  # the handler runs between bytecodes of the main thread
                if t._stop_signal:
                    break
        assert t._stop_signal == "SIGINT"
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(100):
                pass
    finally:
        t._restore_signal_handlers(old)
    assert signal.getsignal(signal.SIGINT) is old[signal.SIGINT]


def test_training_eval_equals_the_heldout_evaluator(tok, shards, tmp_path):
    """One scoring primitive, one bits-per-byte definition: the trainer's held-out evaluation and
    kexaone.eval.heldout.evaluate_heldout give the same loss and bits per byte on the same documents (rows of SEQ
    tokens overlapping by one = the evaluator's windows of SEQ - 1 targets)."""
    from kexaone.eval.heldout import evaluate_heldout

    idx = shards.split_indices(0.05)[1][:6]
    ev = eval_set_from_shards([(shards, idx)], SEQ, BATCH, max_rows=1000)
    texts = [corpus()[int(d)] for d in idx]
    assert ev.n_bytes == sum(len(t.encode("utf-8")) for t in texts)
    assert ev.n_tokens == sum(len(tok.encode(t)) for t in texts)
    m = tiny_model(tok)
    got = Trainer(m, tok, iter(()), cfg(tmp_path, max_steps=1), eval_set=ev).evaluate()
    ref = evaluate_heldout(m, tok, {("synthetic", "en"): texts}, seq_len=SEQ - 1, batch_size=3)[0]
    assert ref.tokens == ev.n_tokens and ref.bytes == ev.n_bytes
    assert got["loss"] == pytest.approx(ref.loss, rel=1e-5)
    assert got["bpb"] == pytest.approx(ref.bits_per_byte, rel=1e-5)
