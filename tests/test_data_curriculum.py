"""Curriculum: stage definitions, switching by tokens consumed, exact resume, the default synthetic curriculum."""

from __future__ import annotations

import json

import pytest
import torch
from test_data_support import tiny_tokenizer

from kexaone.data.curriculum import (
    Curriculum,
    CurriculumLoader,
    CurriculumStage,
    build_curriculum_shards,
    default_curriculum,
    synthetic_training_data,
)
from kexaone.data.sources import parse_spec


@pytest.fixture(scope="module")
def two_files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cur")
    a, b = tmp / "digits.txt", tmp / "letters.txt"
    a.write_text("\n".join(f"{i} {i + 1} {i * 7}" for i in range(200)) + "\n")
    b.write_text("\n".join(f"abc {'xyz ' * (i % 4)}qq" for i in range(200)) + "\n")
    tok = tiny_tokenizer()
    cur = Curriculum((CurriculumStage("one", (str(a),), 3 * 4 * 16), CurriculumStage("two", (f"{b}@1",), 100)))
    shards = build_curriculum_shards(cur, tok, tmp / "cache")
    vocab_a: set[int] = set()
    for i in range(shards[str(a)].num_documents):
        vocab_a.update(shards[str(a)].document(i).tolist())
    return tok, cur, shards, vocab_a


def test_stage_validation():
    with pytest.raises(ValueError, match="tokens"):
        CurriculumStage("s", ("x.txt",), 0)
    with pytest.raises(ValueError, match="empty mixture"):
        CurriculumStage("s", (), 10)
    with pytest.raises(ValueError, match="unique"):
        Curriculum((CurriculumStage("s", ("x.txt",), 1), CurriculumStage("s", ("y.txt",), 1)))
    c = Curriculum((CurriculumStage("s", ("x.txt@2",), 5),))
    assert Curriculum.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_default_curriculum_shape(tmp_path):
    cur = default_curriculum(tmp_path, 1_000_000, extra=["mine.jsonl@3"])
    assert [s.name for s in cur.stages] == ["foundational-knowledge", "domain-expertise", "reasoning"]
    assert cur.total_tokens == 1_000_000 and cur.stages[0].tokens == 500_000
    weights = [{parse_spec(m).path.rsplit("/", 1)[-1]: parse_spec(m).weight for m in s.mixture} for s in cur.stages]
    for w in weights:
        assert set(w) == {"knowledge.jsonl", "arithmetic.jsonl", "retrieval.jsonl", "tools.jsonl", "code.jsonl",
                          "mine.jsonl"}  # every stage rehearses every domain, user data joins each
        assert w["mine.jsonl"] == pytest.approx(0.3) and sum(w.values()) == pytest.approx(1.0)
    assert weights[0]["knowledge.jsonl"] > weights[1]["knowledge.jsonl"] > weights[2]["knowledge.jsonl"]
    assert weights[1]["code.jsonl"] > weights[0]["code.jsonl"]
    assert weights[2]["tools.jsonl"] > weights[0]["tools.jsonl"] and \
        weights[2]["arithmetic.jsonl"] > weights[0]["arithmetic.jsonl"]


def test_stage_switch_by_tokens(two_files):
    tok, cur, shards, vocab_a = two_files
    loader = CurriculumLoader(cur, shards, seq_len=16, batch_size=4, seed=0, heldout=0.0)
    stages = []
    for step in range(6):
        batch = next(loader)
        stages.append(loader.stage_name)
        in_a = set(batch["input_ids"].flatten().tolist()) <= vocab_a | {tok.eot_id}
        assert in_a == (loader.stage_name == "one")
    assert stages == ["one"] * 3 + ["two"] * 3  # stage one lasts 3 x 4 x 16 tokens
    assert loader.tokens_consumed == 6 * 4 * 16


def test_curriculum_resume_is_exact(two_files):
    _, cur, shards, _ = two_files
    ref = CurriculumLoader(cur, shards, seq_len=16, batch_size=4, seed=3)
    full = [next(ref)["input_ids"] for _ in range(7)]
    for cut in (2, 3, 5):  # before, at and after the stage boundary
        a = CurriculumLoader(cur, shards, seq_len=16, batch_size=4, seed=3)
        for _ in range(cut):
            next(a)
        b = CurriculumLoader(cur, shards, seq_len=16, batch_size=4, seed=3)
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        assert b.stage_name == a.stage_name and b.tokens_consumed == a.tokens_consumed
        for k in range(cut, 7):
            assert torch.equal(next(b)["input_ids"], full[k])
    changed = Curriculum((CurriculumStage("one", cur.stages[0].mixture, 10),) + cur.stages[1:])
    c = CurriculumLoader(changed, shards, seq_len=16, batch_size=4, seed=3)
    with pytest.raises(ValueError, match="curriculum differs"):
        c.load_state_dict(ref.state_dict())


def test_synthetic_training_data_end_to_end(tmp_path):
    tok = tiny_tokenizer()
    loader, heldout = synthetic_training_data(tok, tmp_path / "corpus", tmp_path / "tokens", total_tokens=64 * 4 * 6,
                                              seq_len=64, batch_size=4, size="tiny", heldout=3)
    seen = set()
    for _ in range(6):
        b = next(loader)
        assert b["input_ids"].shape == (4, 64)
        seen.add(loader.stage_name)
    assert seen == {"foundational-knowledge", "domain-expertise", "reasoning"}
    assert len(heldout) == 5
    tags = set()
    for shards, idx in heldout:
        assert len(idx) > 0
        tags.update(shards.documents_by_tag(idx))
    assert {"knowledge/ko", "knowledge/vi", "arithmetic/en", "code/py", "retrieval/en"} <= tags


def test_default_curriculum_copy_warmup(tmp_path):
    cur = default_curriculum(tmp_path, 1_000_000, copy_warmup_tokens=5_000)
    warm = cur.stages[0]
    assert warm.name == "copy-warmup" and warm.tokens == 5_000
    assert [parse_spec(m).path.rsplit("/", 1)[-1] for m in warm.mixture] == ["retrieval.jsonl"]
    assert [s.name for s in cur.stages[1:]] == ["foundational-knowledge", "domain-expertise", "reasoning"]
    assert sum(s.tokens for s in cur.stages[1:]) == 1_000_000
    with pytest.raises(ValueError, match="retrieval"):
        default_curriculum({"knowledge": "k.jsonl"}, 100, copy_warmup_tokens=10)
    own = default_curriculum(tmp_path, 1_000_000, copy_warmup_tokens=5_000, copy_warmup_source="w.jsonl")
    assert own.stages[0].mixture == ("w.jsonl",) and own.stages[1:] == cur.stages[1:]


def test_copy_warmup_corpus_is_fresh_dense_documents(tmp_path):
    import json

    from kexaone.data.synthetic.corpus import write_copy_warmup_corpus
    from kexaone.data.synthetic.recall import dense_recall_documents

    path = write_copy_warmup_corpus(tmp_path, 20_000, seed=0)
    recs = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    chars = sum(len(r["text"]) for r in recs)
    assert 20_000 <= chars < 20_000 + max(len(r["text"]) for r in recs)  # stops once enough is written
    assert {r["domain"] for r in recs} == {"copy"} and all(r["answers"] for r in recs)
    for r in recs[:5]:
        for a, b in r["answers"]:
            assert 0 <= a < b <= len(r["text"])
    # not the retrieval domain's dense documents (seed 0), so the warm-up does not repeat what the curriculum has
    domain_texts = {d.text for _, d in zip(range(len(recs)), dense_recall_documents(0))}
    assert not domain_texts & {r["text"] for r in recs}
    before = path.stat().st_mtime_ns
    assert write_copy_warmup_corpus(tmp_path, 20_000, seed=0) == path and path.stat().st_mtime_ns == before
    assert write_copy_warmup_corpus(tmp_path, 30_000, seed=0) != path
    with pytest.raises(ValueError, match="chars"):
        write_copy_warmup_corpus(tmp_path, 0)


def test_real_kexaone_tokenizer_through_the_pipeline(tmp_path):
    """The project's SuperBPE tokenizer (trained here on a slice of the corpus): chat specials are single ids,
    shards decode back to the corpus text, and the packer separates documents with <|endoftext|>."""
    from kexaone.data.packing import PackedBatches
    from kexaone.data.shards import build_token_shards
    from kexaone.data.synthetic import tokenizer_corpus, write_corpus
    from kexaone.tokenizer.superbpe import train_superbpe

    tok = train_superbpe(list(tokenizer_corpus("tiny", max_bytes=120_000)), 600, show_progress=False, workers=1)
    paths = write_corpus(tmp_path / "corpus", "tiny")
    shards = build_token_shards(str(paths["arithmetic"]), tok, tmp_path / "tok")
    first = next(iter(open(paths["arithmetic"], encoding="utf-8")))
    text = json.loads(first)["text"]
    ids = shards.document(0).tolist()
    assert tok.decode(ids) == text
    assert ids[0] == tok.special_ids["<|user|>"] and tok.eos_id in ids
    again = build_token_shards(str(paths["arithmetic"]), tok, tmp_path / "tok")
    assert again.path == shards.path  # the tokenizer's fingerprint is stable
    batch = next(PackedBatches([(shards, 1.0)], seq_len=128, batch_size=2))
    ids_BT, doc_BT = batch["input_ids"], batch["doc_ids"]
    assert torch.equal(doc_BT[:, 1:] != doc_BT[:, :-1], ids_BT[:, :-1] == tok.eot_id)
    # `kexaone data tokenize` with the saved tokenizer reuses the very same cache entry
    import argparse

    from kexaone.data import cli

    tok.save(tmp_path / "tokdir")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    args = parser.parse_args(["tokenize", f"{paths['arithmetic']}@2", "--tokenizer", str(tmp_path / "tokdir"),
                              "--cache", str(tmp_path / "tok"), "--workers", "1"])
    assert cli.run(args) == 0
    assert len([p for p in (tmp_path / "tok").iterdir() if not p.name.startswith(".")]) == 1


def test_data_cli(tmp_path, capsys):
    import argparse

    from kexaone.data import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert cli.run(parser.parse_args(["corpus", "--out", str(tmp_path / "c"), "--size", "tiny"])) == 0
    assert (tmp_path / "c" / "manifest.json").exists()
    assert cli.run(parser.parse_args(["tasks", "--out", str(tmp_path / "t.jsonl"), "--size", "tiny",
                                      "--items", "3"])) == 0
    recs = [json.loads(x) for x in open(tmp_path / "t.jsonl", encoding="utf-8")]
    assert {r["task"] for r in recs} == {"arithmetic", "crosslingual_recall", "retrieval", "code_completion"}
    from kexaone.data.shards import build_token_shards

    s = build_token_shards(str(tmp_path / "c" / "tools.jsonl"), tiny_tokenizer(), tmp_path / "tok")
    capsys.readouterr()
    assert cli.run(parser.parse_args(["info", str(s.path)])) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["documents"] == s.num_documents and "tools/ko" in info["tags"]
