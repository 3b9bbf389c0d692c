"""benchmarks/study_induction.py: its data mixtures, answers-only labels, layer placement and report."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("study_induction", ROOT / "benchmarks" / "study_induction.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["study_induction"] = mod
    spec.loader.exec_module(mod)
    return mod


def test_batches_follow_share_order_and_answer_masking(study):
    cfg = study.RunConfig(vocab_size=512, share=1.0, answers_only=True, forms={"mqar": 1.0}, max_steps=4)
    x, labels = next(study.batches(cfg))
    assert x.shape == (16, 64) and int(x.min()) >= study.SPECIAL and int(x.max()) < 512
    # 16 pairs fill a 64-token row: 32 context tokens, then 16 queries whose values are the only labels.
    kept = labels != -100
    assert kept.sum(1).tolist() == [16] * 16
    assert torch.equal(labels[kept], x[kept]) and not kept[:, :33].any()
    none = dataclasses.replace(cfg, share=0.0)
    _, lab = next(study.batches(none))
    assert bool((lab != -100).all())  # background rows keep every label
    late = dataclasses.replace(cfg, order="late")
    it = study.batches(late)
    first = [next(it)[1] for _ in range(4)]
    assert bool((first[0] != -100).all()) and bool((first[1] != -100).all())  # no synthetic rows in the first half
    assert bool((first[2] == -100).any())


def test_first_global_places_global_layers(study):
    c = study.RunConfig(first_global=1).model_config()
    assert "".join("G" if t == "full_attention" else "L" for t in c.layer_types) == "LGLG"
    assert study.RunConfig().model_config().sliding_window == 16
    assert study.RunConfig(window=64).model_config().sliding_window == 64
    with pytest.raises(ValueError, match="first_global"):
        study.RunConfig(first_global=4).model_config()


def test_a_short_run_is_recorded_and_reported(study, tmp_path):
    cfg = study.RunConfig(name="t", vocab_size=256, max_steps=4, eval_every=2, probe_rows=4, warmup=1)
    r = study.run(cfg, log=lambda s: None)
    assert [p["step"] for p in r["curve"]] == [2, 4] and r["layer_types"] == "LLLG"
    path = tmp_path / "s.jsonl"
    study.append(path, r)
    assert study.done_names(path) == {"t"}
    md = tmp_path / "induction_study.md"
    study.report(path, md)
    text = md.read_text()
    # max_steps and probe_rows differ from the defaults; the settings column names max_steps (probe_rows is not data)
    assert "| s4 (LLLG, window 16) | baseline | t | max_steps 4 | 0 |" in text
    assert json.loads(path.read_text())["steps"] == 4


def test_a_stopped_run_keeps_its_curve(study):
    cfg = study.RunConfig(name="t", max_steps=6, eval_every=2, probe_rows=4, warmup=1)
    seen = []

    def log(line):
        seen.append(line)
        if len(seen) == 2:
            raise KeyboardInterrupt  # what main's SIGTERM handler raises

    r = study.run(cfg, log=log)
    assert r["stopped"] == "interrupted" and [p["step"] for p in r["curve"]] == [2, 4] and r["steps"] == 4
