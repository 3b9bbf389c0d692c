"""The shared run scaffold (kexaone.train.run) and the derived CLI (kexaone.train.cli_fields): every config field
has its flag with its docstring as help, section tables in config files, `--init-from` an HF-layout checkpoint
(weights and tokenizer carried over bit for bit, result.json written), and its clear errors."""

from __future__ import annotations

import argparse
import dataclasses
import json

import pytest
import torch

from kexaone.train.cli_fields import config_from_args, field_docs
from kexaone.train.config import TRAIN_SECTIONS, OptimSection, TrainConfig
from kexaone.train.pretrain import add_arguments


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser()
    add_arguments(p)
    return p


def test_every_field_has_a_flag_with_its_docstring():
    p = parser()
    dests = {a.dest: a for a in p._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name == "model_overrides":  # a table: config files only
            assert f.name not in dests
            continue
        assert f.name in dests, f.name
    assert sum(len(dataclasses.fields(s)) for s in TRAIN_SECTIONS) == len(dataclasses.fields(TrainConfig))
    assert dests["lr"].help.startswith(field_docs(OptimSection)["lr"]) and "(default 0.0003)" in dests["lr"].help
    assert dests["precision"].choices == ("fp32", "bf16", "fp8")
    assert p.format_help()  # every help string survives argparse's %-formatting


def test_a_stage_config_reuses_the_sections_with_its_own_defaults():
    """How a new stage declares its config: the shared sections, a redeclared default, its own field."""
    from kexaone.train.cli_fields import add_config_arguments
    from kexaone.train.config import (CheckpointSection, DataSection, ModelSection, ObjectiveSection,
                                      ParallelSection, StageConfig)

    @dataclasses.dataclass
    class StageSection:
        """my stage"""

        out: str = "runs/sft"
        """where the stage writes"""
        epochs: int = 2
        """passes over the data"""

    @dataclasses.dataclass
    class SFTLikeConfig(StageSection, ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection,
                        CheckpointSection, StageConfig):
        """a stage's config: the shared sections plus its own"""

    sections = (ModelSection, DataSection, OptimSection, ObjectiveSection, ParallelSection, CheckpointSection,
                StageSection)
    p = argparse.ArgumentParser()
    add_config_arguments(p, sections, config_cls=SFTLikeConfig)
    c = config_from_args(SFTLikeConfig, p.parse_args(["--epochs", "3", "--seq-len", "512", "--init-from", "m"]))
    assert (c.out, c.epochs, c.seq_len, c.init_from) == ("runs/sft", 3, 512, "m")
    helps = {a.dest: a.help for a in p._actions}
    assert helps["epochs"] == "passes over the data (default 2)" and "(default 'runs/sft')" in helps["out"]
    with pytest.raises(ValueError, match="SFTLikeConfig.seq_len = 0 is invalid"):
        SFTLikeConfig(seq_len=0)


def test_flags_and_files_make_the_config(tmp_path):
    args = parser().parse_args(["--seq-len", "7", "--no-export", "--betas", "0.8", "0.9", "--data", "a.txt",
                                "--data", "b.txt@2", "--router-frozen", "--init-from", "ckpt"])
    c = config_from_args(TrainConfig, args)
    assert (c.seq_len, c.export, c.betas, c.data, c.router_frozen, c.init_from) == (
        7, False, (0.8, 0.9), ["a.txt", "b.txt@2"], True, "ckpt")
    assert c.progress is True and c.lr == 3e-4  # flags not given keep the defaults
    # Section tables and flat keys in one file; a flag given on the command line wins over both.
    (tmp_path / "run.toml").write_text('seq_len = 64\n[optim]\nlr = 0.01\nmax_steps = 3\n[checkpoint]\nsave_every = 2\n'
                                       '[model]\npreset = "small"\n')
    c = config_from_args(TrainConfig, parser().parse_args(["--config", str(tmp_path / "run.toml"), "--lr", "0.5"]))
    assert (c.seq_len, c.lr, c.max_steps, c.save_every, c.preset) == (64, 0.5, 3, 2, "small")
    (tmp_path / "bad.toml").write_text("[optim]\nlrr = 1\n")
    with pytest.raises(ValueError, match="unknown TrainConfig field.*lrr"):
        TrainConfig.from_file(tmp_path / "bad.toml")
    with pytest.raises(ValueError, match="model_overrides.*init_from"):
        TrainConfig(init_from="x", model_overrides={"num_hidden_layers": 2})


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny HF-layout exaone_moe checkpoint with its tokenizer (as `kexaone pretrain` exports one)."""
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer.superbpe import train_superbpe

    d = tmp_path_factory.mktemp("ckpt")
    texts = [f"Record {i}: the value of key {i % 7} is {i * 3}." for i in range(300)]
    tok = train_superbpe(iter(texts), 400, workers=1, show_progress=False)
    torch.manual_seed(5)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                               eos_token_id=tok.eos_id, bos_token_id=None, num_hidden_layers=2)
    KExaoneForCausalLM(cfg).save_pretrained(d / "model")
    tok.save(d / "model")
    (d / "train.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    return d


def test_init_from_starts_from_the_checkpoint(checkpoint, tmp_path, monkeypatch, cache):
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.pretrain import run_pretraining

    monkeypatch.setenv("KEXAONE_CACHE", str(cache))
    out = tmp_path / "run"
    # An LR far below every weight's rounding step and no bias update: one step leaves the weights as loaded.
    cfg = TrainConfig(init_from=str(checkpoint / "model"), data=[str(checkpoint / "train.txt")], max_steps=1,
                      seq_len=32, batch_size=2, lr=1e-30, bias_update_rate=0.0, mtp_loss_weight=0.2,
                      eval_batches=0, out=str(out),
                      progress=False, tensorboard=False, threads=1, peak_flops=1e12, workers=1)
    res = run_pretraining(cfg)
    start = KExaoneForCausalLM.from_pretrained(checkpoint / "model").state_dict()
    end = KExaoneForCausalLM.from_pretrained(res.model_dir).state_dict()
    assert start.keys() == end.keys() and all(torch.equal(start[k], end[k]) for k in start)
    assert (out / "tokenizer" / "tokenizer.json").read_text() == (checkpoint / "model" / "tokenizer.json").read_text()
    record = json.loads((out / "result.json").read_text())
    assert record["stage"] == "pretrain" and record["steps"] == 1 and record["objective"]["name"] == "pretrain"
    assert record["model_dir"] == str(res.model_dir)
    # The run's loss weights live in the model config (the export records what it trained with).
    exported = json.loads((res.model_dir / "config.json").read_text())
    assert exported["kexaone"]["mtp_loss_weight"] == 0.2 and record["objective"]["weights"]["mtp"] == 0.2


def test_init_from_errors(checkpoint, tmp_path):
    from kexaone.train.pretrain import run_pretraining

    base = dict(max_steps=1, out=str(tmp_path / "run"), progress=False, tensorboard=False)
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        run_pretraining(TrainConfig(init_from=str(tmp_path / "nothing"), **base))
    from types import SimpleNamespace

    from kexaone.train.run import build_model

    too_big = SimpleNamespace(vocab_size=10**6)  # a tokenizer with more ids than the checkpoint's embedding
    with pytest.raises(ValueError, match="tokenizer has 1000000 ids but the --init-from checkpoint"):
        build_model(TrainConfig(init_from=str(checkpoint / "model"), **base), too_big)
