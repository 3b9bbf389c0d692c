"""`kexaone extend`: the gate's decisions, the stage loop (repeat until green or budget), stage parsing errors,
the per-stage data mixture (whole long documents, shares, no truncation) and a tiny end-to-end run."""

import argparse
import json

import pytest
import torch

from kexaone.train import extend as ext


# ---------------------------------------------------------------------------------------------- stages
@pytest.mark.parametrize("text,msg", [("", "comma-separated"), ("4096,", "comma-separated"),
                                      ("4k,16k", "integer"), ("16384,4096", "strictly increase"),
                                      ("4096,4096", "strictly increase"), ("32", ">= 64")])
def test_bad_stages_are_clear_errors(text, msg):
    with pytest.raises(ValueError, match=msg) as e:
        ext.parse_stages(text)
    assert repr(text) in str(e.value)


def test_stages_parse_and_config_checks():
    assert ext.parse_stages("4096, 16384") == (4096, 16384)
    cfg = ext.ExtendConfig(init_from="x", out="y", stages="512,2048", base_length=256)
    assert cfg.stages == (512, 2048) and cfg.rounds_per_stage == ext.PRESETS["cpu-small"].rounds_per_stage
    with pytest.raises(ValueError, match="base-length 4096 must be below the first stage"):
        ext.ExtendConfig(init_from="x", out="y", stages="4096", base_length=4096)
    with pytest.raises(ValueError, match="preset-budget 'huge'"):
        ext.ExtendConfig(init_from="x", out="y", preset_budget="huge")
    with pytest.raises(ValueError, match="niah-threshold"):
        ext.ExtendConfig(init_from="x", out="y", niah_threshold=1.5)
    gpu = ext.ExtendConfig(init_from="x", out="y", preset_budget="8k-32k-256k")
    assert gpu.stages == (32768, 262144) and gpu.base_length == 8192
    # the second stage raises the long-document share
    assert gpu.shares(1)[2] > gpu.shares(0)[2] and gpu.shares(5) == gpu.shares(1)


def test_cli_bad_stages_exit_2(capsys, tmp_path):
    p = argparse.ArgumentParser()
    ext.add_arguments(p)
    args = p.parse_args(["--init-from", str(tmp_path), "--out", str(tmp_path / "o"), "--stages", "8k"])
    assert ext.run(args) == 2
    assert "--stages '8k' is invalid" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- gate
def test_gate_decisions():
    g = ext.gate_decision(0.95, 1.02, 1.0, threshold=0.9, tolerance=0.03)
    assert g.green and g.niah_ok and g.bpb_ok and g.bpb_limit == pytest.approx(1.03)
    g = ext.gate_decision(0.95, 1.031, 1.0, threshold=0.9, tolerance=0.03)
    assert not g.green and g.niah_ok and not g.bpb_ok  # bpb rose by more than 3%
    g = ext.gate_decision(0.89, 0.9, 1.0)
    assert not g.green and not g.niah_ok and g.bpb_ok
    assert ext.gate_decision(0.9, 1.03, 1.0).green  # both bounds inclusive
    assert ext.gate_decision(1.0, 2.0, 1.0, tolerance=1.0).green


def _loop(niahs, rounds, bpb=1.0):
    trained, seen = [], []

    def train(r):
        trained.append(r)
        return {"round": r}

    def evaluate(r):
        return ext.gate_decision(niahs[r - 1], bpb, 1.0), {}

    res = ext.run_stage_rounds(rounds, train, evaluate, lambda t, g, x: seen.append((t["round"], g.green)))
    return res, trained, seen


def test_stage_repeats_until_green():
    res, trained, seen = _loop([0.2, 0.6, 0.95, 1.0], rounds=4)
    assert res == (True, 3) and trained == [1, 2, 3]
    assert seen == [(1, False), (2, False), (3, True)]


def test_stage_stops_at_budget_when_red():
    res, trained, _ = _loop([0.2, 0.6, 0.8, 0.95], rounds=3)
    assert res == (False, 3) and trained == [1, 2, 3]
    res, trained, _ = _loop([1.0, 1.0], rounds=2, bpb=1.2)  # NIAH perfect but short context got worse
    assert res == (False, 2) and trained == [1, 2]


# ---------------------------------------------------------------------------------------------- end to end
@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    from kexaone.config import KExaoneConfig
    from kexaone.data.synthetic import tokenizer_corpus
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.tokenizer.superbpe import train_superbpe

    d = tmp_path_factory.mktemp("ckpt") / "model"
    tok = train_superbpe(list(tokenizer_corpus("tiny", max_bytes=100_000)), 500, workers=1, show_progress=False)
    torch.manual_seed(3)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                               eos_token_id=tok.eos_id, bos_token_id=None, num_hidden_layers=2,
                                               max_position_embeddings=256)
    KExaoneForCausalLM(cfg).save_pretrained(d)
    tok.save(d)
    return d


def test_stage_mixture_whole_documents_and_shares(checkpoint, tmp_path, monkeypatch, cache):
    from kexaone.data.docpacking import DocumentPackedBatches
    from kexaone.tokenizer import KExaoneTokenizer

    monkeypatch.setenv("KEXAONE_CACHE", str(cache))
    tok = KExaoneTokenizer.from_dir(checkpoint)
    cfg = ext.ExtendConfig(init_from=str(checkpoint), out=str(tmp_path), stages="512,1024", base_length=256,
                           long_docs=6, synthetic_size="tiny", corpus="none")
    src = ext._sources(cfg, tok)
    for i, length in enumerate(cfg.stages):
        mixture, info = ext.stage_mixture(cfg, i, length, tok, src, tmp_path)
        weights = [w for _, w in mixture]
        assert sum(weights) == pytest.approx(1.0)
        assert weights[-1] == pytest.approx(cfg.shares(i)[2]) and weights[-2] == pytest.approx(cfg.shares(i)[1])
        long_shards = mixture[-1][0]
        assert info["long_documents"] == 6 and info["long_sources"] == ["long/synthetic"]
        # documents aim at ~85% of the stage's length: long, but whole (never cut to fit)
        assert info["long_tokens_mean"] > 0.5 * length
        assert info["long_tokens_max"] < 2 * length  # oversized sections are skipped, not cut
        data = DocumentPackedBatches([(long_shards, 1.0)], length, 2, heldout=0, truncate=False)
        seen = 0
        for _ in range(3):
            b = next(data)
            for row in range(b["input_ids"].shape[0]):
                ids = b["input_ids"][row][b["labels"][row] != -100]
                seen += len(ids)
        assert data.truncated_tokens == 0 and seen == data.real_tokens
        if i == 1:
            assert info["shares"]["long"] > 0.3  # stage 2 raises the long share
    # every long document is a whole sequence of retrieval / knowledge sections joined by blank lines
    first = json.loads((tmp_path / "data" / "long_512.jsonl").read_text().splitlines()[0])["text"]
    assert "\n\n" in first


def test_tiny_end_to_end_run_writes_report(checkpoint, tmp_path, monkeypatch, cache):
    monkeypatch.setenv("KEXAONE_CACHE", str(cache))
    out = tmp_path / "ext"
    p = argparse.ArgumentParser()
    ext.add_arguments(p)
    args = p.parse_args(["--init-from", str(checkpoint), "--out", str(out), "--stages", "320,384",
                         "--base-length", "256", "--rounds-per-stage", "2", "--steps-per-round", "1",
                         "--batch-size", "2", "--long-docs", "4", "--niah-depths", "0,100", "--corpus", "none",
                         "--synthetic-size", "tiny", "--precision", "fp32", "--device", "cpu",
                         "--niah-threshold", "1.0"])
    assert ext.run(args) == 0
    rep = json.loads((out / "extend_report.json").read_text())
    assert rep["baseline"]["length"] == 256 and rep["baseline"]["niah_lengths"] == [256]
    assert len(rep["stages"]) == 2
    for s, length in zip(rep["stages"], (320, 384)):
        assert s["length"] == length and 1 <= len(s["rounds"]) <= 2
        assert s["truncated_tokens"] == 0
        for r in s["rounds"]:
            g = r["gate"]
            assert r["steps"] == 1 and r["tokens"] > 0
            assert g["bpb_limit"] == pytest.approx(rep["baseline"]["bpb"] * 1.03)
            assert g["green"] == (g["niah"] >= 1.0 and g["bpb"] <= g["bpb_limit"])
            assert set(r["niah_grid"]) == {f"L={L} depth={D}%" for L in s["niah_lengths"] for D in (0, 100)}
            assert (out / r["heatmap"]).is_file()
        # a red stage used its whole budget; a green one stopped at its green round
        assert len(s["rounds"]) == (s["rounds"].index(next(r for r in s["rounds"] if r["gate"]["green"])) + 1
                                    if s["green"] else 2)
    md = (out / "extend_report.md").read_text()
    assert "## Stage 2: 384 tokens" in md and "| round |" in md
    cfg = json.loads((out / "model" / "config.json").read_text())
    assert cfg["max_position_embeddings"] == 384
    assert (out / "model" / "tokenizer.json").is_file()


def test_long_documents_are_whole_sections_near_the_target():
    from kexaone.data.long_docs import OVERSHOOT, _join_until, long_documents

    assert _join_until(iter(["a" * 10, "b" * 50, "c" * 10, "d" * 10]), 30) == "a" * 10 + "\n\n" + "c" * 10 + \
        "\n\n" + "d" * 10  # the 50-char section would overshoot: skipped, never cut
    assert _join_until(iter(["x" * 100]), 10) == "x" * 100  # nothing else to take: the section alone
    for target in (2_000, 60_000):
        docs = long_documents(target, 3, seed=1)
        assert len(docs) == 3
        for d in docs:
            assert target <= len(d.text.encode("utf-8")) <= OVERSHOOT * target + 2


def test_corpus_long_documents_from_train_only(monkeypatch):
    from kexaone.data import long_docs
    from kexaone.pipeline.corpus import corpora_dir

    if not (corpora_dir() / "train").is_dir():
        monkeypatch.setenv("KEXAONE_CORPORA", "/work/shared/corpora")
    root = long_docs.default_corpus_root()
    if root is None:
        pytest.skip("../shared/corpora/train is absent")
    with pytest.raises(ValueError, match="evaluation corpus"):
        long_docs.check_corpus_root(root.parent / "text")
    docs = long_docs.long_documents(3000, 4, seed=2, corpus_root=root, corpus_share=1.0)
    assert len(docs) == 4 and all(d.tag.startswith("long/") and d.tag != "long/synthetic" for d in docs)
    assert all(3000 <= len(d.text.encode("utf-8")) <= 1.25 * 3000 + 2 or "\n\n" not in d.text for d in docs)
