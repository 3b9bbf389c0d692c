"""`kexaone pretrain` end to end (in this process, through kexaone.cli.main): the defaults just work (synthetic
curriculum, default tokenizer cached, HF export that loads back), user data and config files, stage boundaries in
the metrics, and the clear errors of bad input (exit code 2 and a message naming the problem; 1 on divergence)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from kexaone.cli import main

FAST = ["--synthetic-size", "tiny", "--threads", "1", "--no-progress", "--no-tensorboard", "--peak-flops", "1e12"]


@pytest.fixture(autouse=True, scope="module")
def isolated_cache(cache):
    """Every run of this session shares one fresh cache (tokenizer, corpus, token shards); threads restored."""
    old_env, old_threads = os.environ.get("KEXAONE_CACHE"), torch.get_num_threads()
    os.environ["KEXAONE_CACHE"] = str(cache)
    yield cache
    torch.set_num_threads(old_threads)
    if old_env is None:
        del os.environ["KEXAONE_CACHE"]
    else:
        os.environ["KEXAONE_CACHE"] = old_env


def records(out: Path, kind: str | None = None) -> list[dict]:
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if kind is None or r["kind"] == kind]


def corpus_lines(n: int = 400) -> list[str]:
    return [f"Document {i}: the number {i} is {'even' if i % 2 == 0 else 'odd'}, and {i} + 1 = {i + 1}."
            for i in range(n)]


@pytest.fixture(scope="module")
def default_run(tmp_path_factory, isolated_cache) -> Path:
    """`kexaone pretrain --preset tiny --max-steps 10 --out DIR` (plus the tiny corpus and one thread)."""
    out = tmp_path_factory.mktemp("default") / "run"
    assert main(["pretrain", "--preset", "tiny", "--max-steps", "10", "--out", str(out), "--seq-len", "64",
                 "--batch-size", "4", "--eval-every", "5", "--eval-batches", "2", *FAST]) == 0
    return out


def test_defaults_train_export_and_cache(default_run, isolated_cache, capsys):
    out = default_run
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.train.checkpoint import CheckpointManager

    tok = KExaoneTokenizer.from_dir(out / "model")
    model = KExaoneForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size == tok.vocab_size == 2048  # sized from the tokenizer (tiny preset's default)
    assert model.config.pad_token_id == tok.pad_id and model.config.eos_token_id == tok.eos_id
    # The export holds exactly the final checkpoint's weights.
    final = CheckpointManager(out / "checkpoints").load()
    assert final["step"] == 10
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in final["model"].items())
    ids = torch.tensor([tok.encode("Hello world")])
    logits = model.eval()(ids).logits
    assert logits.shape == (1, ids.shape[1], tok.vocab_size)
    # The export is a transformers checkpoint: same logits from ExaoneMoeForCausalLM.
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        torch.testing.assert_close(hf(ids).logits, logits.detach(), atol=1e-5, rtol=1e-4)
    # Default tokenizer: built once into the cache, copied into <out>/tokenizer for resumes.
    cached = list((isolated_cache / "tokenizers").glob("synthetic-tiny-2048-*/tokenizer.json"))
    assert len(cached) == 1 and (out / "tokenizer" / "tokenizer.json").is_file()
    assert (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    train = records(out, "train")
    assert [r["step"] for r in train] == list(range(1, 11))
    assert all(set(r) >= {"loss", "ce", "mtp", "aux", "lr", "grad_norm", "tok_per_s", "mfu", "max_vio"} for r in train)
    assert [r["step"] for r in records(out, "eval")] == [5, 10]


def test_curriculum_stage_boundaries_are_recorded(default_run):
    # 10 steps of 256 tokens = 2560 tokens split 50/30/20 over the three stages.
    stages = [(r["step"], r["stage"]) for r in records(default_run, "stage")]
    assert stages == [(0, "foundational-knowledge"), (5, "domain-expertise"), (8, "reasoning")]
    assert [r["stage"] for r in records(default_run, "train")][4:6] == ["foundational-knowledge", "domain-expertise"]


def test_copy_warmup_runs_first(tmp_path, default_run, capsys):
    """--copy-warmup-steps 2: two steps on fresh retrieval-dense documents alone (a corpus file of their own), then
    the three stages over the remaining four; the warm-up counts in --max-steps; bad combinations are clear errors."""
    out = tmp_path / "run"
    args = ["pretrain", "--preset", "tiny", "--max-steps", "6", "--seq-len", "64", "--batch-size", "4",
            "--tokenizer", str(default_run / "tokenizer"), "--eval-batches", "1", *FAST]
    assert main([*args, "--out", str(out), "--copy-warmup-steps", "2"]) == 0
    # the curriculum's 4 x 256 tokens split 50/30/20: 2 steps, then 2 (rounded up), and no step is left for the third
    assert [(r["step"], r["stage"]) for r in records(out, "stage")] == [
        (0, "copy-warmup"), (2, "foundational-knowledge"), (4, "domain-expertise")]
    assert [r["stage"] for r in records(out, "train")][:3] == ["copy-warmup"] * 2 + ["foundational-knowledge"]
    from kexaone.train.run import cache_root

    # 2 steps x 256 tokens x 4 characters per token of fresh dense documents, next to the tiny corpus
    assert list((cache_root() / "synthetic" / "tiny").glob("copy_warmup-v*-0-2048.jsonl"))
    assert main([*args, "--out", str(tmp_path / "r2"), "--copy-warmup-steps", "6"]) == 2
    assert "must be below the run's 6 steps" in capsys.readouterr().err
    (tmp_path / "a.txt").write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    assert main([*args, "--out", str(tmp_path / "r3"), "--copy-warmup-steps", "1", "--data",
                 str(tmp_path / "a.txt")]) == 2
    assert "needs the synthetic curriculum" in capsys.readouterr().err


def test_user_data_and_config_file(tmp_path, default_run):
    (tmp_path / "a.txt").write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": t.upper()}) for t in corpus_lines(200)) + "\n")
    (tmp_path / "run.toml").write_text(
        'preset = "tiny"\nmax_steps = 4\nseq_len = 32\nbatch_size = 2\noptimizer = "adamw"\nlr = 1e-3\n'
        f'data = ["{tmp_path / "a.txt"}@3", "{tmp_path / "b.jsonl"}"]\n'
        '[model_overrides]\nnum_hidden_layers = 2\n')
    out = tmp_path / "run"
    assert main(["pretrain", "--config", str(tmp_path / "run.toml"), "--tokenizer", str(default_run / "tokenizer"),
                 "--out", str(out), "--eval-batches", "2", *FAST]) == 0
    cfg = records(out, "config")[0]
    assert cfg["train_config"]["optimizer"] == "adamw" and cfg["model_config"]["num_hidden_layers"] == 2
    assert len(records(out, "train")) == 4 and not records(out, "stage")  # user data alone: no curriculum
    assert records(out, "eval")  # held-out split of the user's documents


def test_document_packing_of_user_data(tmp_path, default_run):
    """--packing document trains on whole documents (DocumentPackedBatches: real tokens <= rows x seq_len)."""
    (tmp_path / "a.txt").write_text("\n".join(corpus_lines()) + "\n", encoding="utf-8")
    out = tmp_path / "run"
    assert main(["pretrain", "--preset", "tiny", "--max-steps", "3", "--seq-len", "64", "--batch-size", "2",
                 "--data", str(tmp_path / "a.txt"), "--packing", "document", "--tokenizer",
                 str(default_run / "tokenizer"), "--out", str(out), "--eval-batches", "1", *FAST]) == 0
    train = records(out, "train")
    assert len(train) == 3 and all(0 < r["data_tokens"] <= r["tokens"] for r in train)
    assert records(out, "config")[0]["train_config"]["packing"] == "document"
    assert json.loads((out / "result.json").read_text())["steps"] == 3
    with pytest.raises(ValueError, match="--packing document needs your own --data"):
        from kexaone.train.pretrain import run_pretraining
        from kexaone.train.config import TrainConfig

        run_pretraining(TrainConfig(packing="document", max_steps=1, out=str(tmp_path / "syn"), progress=False,
                                    tensorboard=False, synthetic_size="tiny", tokenizer=str(default_run / "tokenizer")))


@pytest.mark.parametrize("case", ["missing-data", "empty-data", "unwritable-out", "missing-tokenizer",
                                  "bad-config", "bad-preset", "resume-without-checkpoint"])
def test_bad_input_is_a_clear_error(case, tmp_path, capsys, default_run):
    out = tmp_path / "run"
    args = ["pretrain", "--preset", "tiny", "--max-steps", "2", "--seq-len", "32", "--batch-size", "2",
            "--out", str(out), *FAST]
    if case == "missing-data":
        args += ["--data", str(tmp_path / "nope.jsonl")]
        needle = "nope.jsonl' does not exist"
    elif case == "empty-data":
        (tmp_path / "empty.txt").write_text("\n\n")
        args += ["--data", str(tmp_path / "empty.txt"), "--tokenizer", str(default_run / "tokenizer")]
        needle = "no non-empty document"
    elif case == "unwritable-out":
        (tmp_path / "file").write_text("x")
        args[args.index(str(out))] = str(tmp_path / "file" / "run")
        needle = "cannot be created"
    elif case == "missing-tokenizer":
        args += ["--tokenizer", str(tmp_path / "no-tok")]
        needle = "no-tok does not exist"
    elif case == "bad-config":
        (tmp_path / "c.json").write_text('{"lr": "fast"}')
        args += ["--config", str(tmp_path / "c.json")]
        needle = "lr"
    elif case == "bad-preset":
        args[args.index("tiny")] = "huge"
        needle = "unknown preset 'huge'"
    else:
        args += ["--resume"]
        needle = "no checkpoint"
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "kexaone pretrain: error:" in err and needle in err, err
    assert not (out / "checkpoints").exists()  # failed before training


def test_existing_run_needs_resume(default_run, capsys):
    assert main(["pretrain", "--preset", "tiny", "--max-steps", "2", "--out", str(default_run), *FAST]) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert sorted(p.name for p in (default_run / "checkpoints").glob("step_*"))[-1] == "step_00000010"


def test_divergence_exits_1_and_keeps_the_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    # An absurd LR blows the weights up after the first step; every later step is non-finite.
    with pytest.warns(UserWarning, match="non-finite loss or gradient"):
        rc = main(["pretrain", "--preset", "tiny", "--max-steps", "12", "--seq-len", "32", "--batch-size", "2",
                   "--lr", "1e8", "--max-bad-steps", "2", "--save-every", "1", "--precision", "fp32",
                   "--out", str(out), *FAST])
    assert rc == 1
    assert "2 consecutive steps had a non-finite loss" in capsys.readouterr().err
    from kexaone.train.checkpoint import CheckpointManager

    state = CheckpointManager(out / "checkpoints").load()
    assert state["step"] <= 2 and state["bad_in_row"] <= 1
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
