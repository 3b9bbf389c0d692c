"""Data pipeline: readers for every format, token-shard cache, packing invariants, resume, rank sharding."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from test_data_support import ShrunkVocab, tiny_tokenizer

from kexaone.data.packing import PackedBatches, iter_document_batches
from kexaone.data.shards import TokenShards, build_token_shards, tokenizer_fingerprint
from kexaone.data.sources import (
    Document,
    iter_documents,
    iter_tagged_documents,
    parse_mixture,
    parse_spec,
    source_fingerprint,
)

DOCS = [f"document number {i} says {'abc ' * (i % 7)}and ends." for i in range(60)]


# ----------------------------------------------------------------------------- readers
def test_parse_spec_and_mixture():
    assert parse_spec("a/b.jsonl@2.5").weight == 2.5 and parse_spec("a/b.jsonl@2.5").path == "a/b.jsonl"
    assert parse_spec("user@host.txt").path == "user@host.txt"  # not a number: part of the path
    assert [s.weight for s in parse_mixture("x.txt@1,y.txt@3")] == [1.0, 3.0]
    with pytest.raises(ValueError, match="positive"):
        parse_spec("x.txt@0")
    with pytest.raises(ValueError):
        parse_mixture([])


def test_txt_lines_and_whole_file(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("first doc\n\n  \nsecond doc\n", encoding="utf-8")
    assert list(iter_documents(str(f))) == ["first doc", "second doc"]
    assert list(iter_documents(str(f), txt_mode="file")) == ["first doc\n\n  \nsecond doc\n"]
    with pytest.raises(ValueError, match="txt_mode"):
        list(iter_documents(str(f), txt_mode="para"))


def test_jsonl_field_tags_and_errors(tmp_path):
    f = tmp_path / "d.jsonl"
    rows = [{"text": "alpha", "domain": "knowledge", "lang": "ko"}, {"text": "beta"}, {"content": "x", "text": ""}]
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    docs = list(iter_tagged_documents(str(f)))
    assert docs == [Document("alpha", "knowledge/ko"), Document("beta", "d")]
    g = tmp_path / "bad.jsonl"
    g.write_text('{"text": "ok"}\n{"text": broken\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid JSON"):
        list(iter_documents(str(g)))
    h = tmp_path / "nofield.jsonl"
    h.write_text('{"body": "ok"}\n')
    with pytest.raises(ValueError, match="no 'text' field"):
        list(iter_documents(str(h)))
    assert list(iter_documents(str(h), text_field="body")) == ["ok"]


def test_parquet_and_hf_dir(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": ["p1", None, "p2"], "n": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list(iter_documents(str(tmp_path / "t.parquet"))) == ["p1", "p2"]
    with pytest.raises(ValueError, match="no column 'body'"):
        list(iter_documents(str(tmp_path / "t.parquet"), text_field="body"))
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": ["h1", "h2"]}).save_to_disk(str(tmp_path / "hfds"))
    assert list(iter_documents(str(tmp_path / "hfds"))) == ["h1", "h2"]


def test_glob_missing_empty_and_unsupported(tmp_path):
    (tmp_path / "a.txt").write_text("one\n")
    (tmp_path / "b.txt").write_text("two\n")
    assert list(iter_documents(str(tmp_path / "*.txt"))) == ["one", "two"]
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        list(iter_documents(str(tmp_path / "nope.txt")))
    with pytest.raises(FileNotFoundError, match=r"\*.jsonl"):
        list(iter_documents(str(tmp_path / "*.jsonl")))
    (tmp_path / "empty.txt").write_text("\n \n")
    with pytest.raises(ValueError, match="no non-empty document"):
        list(iter_documents(str(tmp_path / "empty.txt")))
    (tmp_path / "m.py").write_text("def f():\n    return 1\n")
    assert list(iter_tagged_documents(str(tmp_path / "*.py"))) == [Document("def f():\n    return 1\n", "code/py")]
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unsupported data file"):
        list(iter_documents(str(tmp_path / "x.csv")))


def test_hub_offline_is_a_clear_error(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*a, **k):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match="save_to_disk"):
        list(iter_documents("hf:someone/corpus"))


# ----------------------------------------------------------------------------- token shards
def test_shards_roundtrip_cache_and_split(tmp_path):
    tok = tiny_tokenizer()
    f = tmp_path / "c.txt"
    f.write_text("\n".join(DOCS) + "\n")
    s = build_token_shards(str(f), tok, tmp_path / "cache", num_workers=2, chunk_docs=7, shard_tokens=100)
    assert s.num_documents == len(DOCS) and len(s.meta["shards"]) > 1  # documents spread over several shards
    for i in (0, 17, 59):
        assert s.document(i).tolist() == tok.encode(DOCS[i])
    assert s.num_bytes == sum(len(d.encode()) for d in DOCS)
    # cached: same content + tokenizer -> same directory, not rebuilt
    mtime = os.path.getmtime(s.path / "meta.json")
    s2 = build_token_shards(str(f), tok, tmp_path / "cache")
    assert s2.path == s.path and os.path.getmtime(s2.path / "meta.json") == mtime
    # a list of the same documents (different tags: none) gets its own key; an iterator equals the list
    s3 = build_token_shards(list(DOCS) + ["  "], tok, tmp_path / "cache")
    s4 = build_token_shards(iter(DOCS), tok, tmp_path / "cache")
    assert s3.path == s4.path != s.path
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]
    # held-out split: deterministic, disjoint, per-tag count
    tr, ho = s.split_indices(0.2)
    assert len(set(tr) & set(ho)) == 0 and len(tr) + len(ho) == len(DOCS) and 3 <= len(ho) <= 25
    assert len(s.split_indices(5)[1]) == 5
    np.testing.assert_array_equal(TokenShards.load(s.path).heldout_mask(0.2), s.heldout_mask(0.2))


def test_token_ids_beyond_vocab_raise(tmp_path):
    with pytest.raises(ValueError, match=r"outside the tokenizer's vocabulary \[0, 50\)"):
        build_token_shards(DOCS[:5], ShrunkVocab(tiny_tokenizer()._tok), tmp_path)
    assert not list(tmp_path.iterdir())  # nothing half-written left behind


def test_tokenizer_fingerprint_changes_with_tokenizer():
    assert tokenizer_fingerprint(tiny_tokenizer(320)) == tokenizer_fingerprint(tiny_tokenizer(320))
    assert tokenizer_fingerprint(tiny_tokenizer(320)) != tokenizer_fingerprint(tiny_tokenizer(300))


def test_source_fingerprint_follows_content(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text("a\nb\n")
    k1 = source_fingerprint(str(f))
    f.write_text("a\nc\n")
    assert source_fingerprint(str(f)) != k1


# ----------------------------------------------------------------------------- packing
@pytest.fixture(scope="module")
def two_sources(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pack")
    tok = tiny_tokenizer()
    a = build_token_shards([Document(d, "a") for d in DOCS], tok, tmp)
    b = build_token_shards([Document(f"zz {i} " * (1 + i % 5), "b") for i in range(40)], tok, tmp)
    return tok, a, b


def test_packing_invariants(two_sources):
    tok, a, b = two_sources
    pb = PackedBatches([(a, 3.0), (b, 1.0)], seq_len=32, batch_size=4, seed=1)
    for _ in range(6):
        batch = next(pb)
        ids, labels, doc = batch["input_ids"], batch["labels"], batch["doc_ids"]
        assert ids.shape == labels.shape == doc.shape == (4, 32) and ids.dtype == doc.dtype == torch.int64
        assert torch.equal(labels, ids)  # transformers convention; packed rows have no padding
        assert (doc[:, 0] == 0).all()
        # doc_ids change exactly at the token after an eot, and nowhere else
        change = doc[:, 1:] != doc[:, :-1]
        after_eot = ids[:, :-1] == tok.eot_id
        assert torch.equal(change, after_eot)
    assert pb.tokens_consumed == 6 * 4 * 32


def test_stream_reconstructs_documents(two_sources):
    tok, a, _ = two_sources
    pb = PackedBatches([(a, 1.0)], seq_len=50, batch_size=2, seed=3, heldout=0.0)
    stream = torch.cat([next(pb)["input_ids"].reshape(-1) for _ in range(40)]).tolist()
    # one epoch = every document once, each followed by eot, in some order
    epoch = stream[: pb.streams[0].epoch_tokens]
    docs, cur = [], []
    for t in epoch:
        if t == tok.eot_id:
            docs.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert sorted(docs) == sorted(DOCS)


def test_mixture_weights_respected(two_sources):
    _, a, b = two_sources
    pb = PackedBatches([(a, 3.0), (b, 1.0)], seq_len=8, batch_size=16, seed=0)
    picks = np.concatenate([pb.choices(s) for s in range(200)])
    assert abs((picks == 0).mean() - 0.75) < 0.03


def test_exact_resume_mid_stream(two_sources):
    _, a, b = two_sources
    ref = PackedBatches([(a, 2.0), (b, 1.0)], seq_len=24, batch_size=4, seed=7)
    full = [next(ref) for _ in range(10)]
    first = PackedBatches([(a, 2.0), (b, 1.0)], seq_len=24, batch_size=4, seed=7)
    for _ in range(4):
        next(first)
    state = json.loads(json.dumps(first.state_dict()))  # survives JSON (checkpoint metadata)
    resumed = PackedBatches([(a, 2.0), (b, 1.0)], seq_len=24, batch_size=4, seed=7)
    resumed.load_state_dict(state)
    assert resumed.tokens_consumed == 4 * 4 * 24
    for k in range(4, 10):
        got = next(resumed)
        for key in ("input_ids", "labels", "doc_ids"):
            assert torch.equal(got[key], full[k][key])
    other = PackedBatches([(a, 2.0), (b, 1.0)], seq_len=16, batch_size=4, seed=7)
    with pytest.raises(ValueError, match="seq_len"):
        other.load_state_dict(state)


def test_rank_sharding_union_is_global_batch(two_sources):
    _, a, b = two_sources
    mix = [(a, 1.0), (b, 1.0)]
    single = PackedBatches(mix, seq_len=16, batch_size=6, seed=2)
    ranks = [PackedBatches(mix, seq_len=16, batch_size=6, seed=2, rank=r, world_size=3) for r in range(3)]
    for _ in range(5):
        g = next(single)
        parts = [next(p) for p in ranks]
        assert all(p["input_ids"].shape == (2, 16) for p in parts)
        for r, p in enumerate(parts):
            for key in ("input_ids", "doc_ids"):
                assert torch.equal(p[key], g[key][r::3])
        assert len({p["input_ids"][0].tolist().__repr__() for p in parts}) == 3  # ranks see different data
    # a state saved on 3 ranks resumes on 1 rank at the same global position
    one = PackedBatches(mix, seq_len=16, batch_size=6, seed=2)
    one.load_state_dict(ranks[0].state_dict())
    assert torch.equal(next(one)["input_ids"], next(single)["input_ids"])
    with pytest.raises(ValueError, match="multiple of world_size"):
        PackedBatches(mix, seq_len=16, batch_size=5, world_size=2, rank=0)


def test_eval_batches_cover_documents(two_sources):
    tok, a, _ = two_sources
    idx = np.array([0, 5, 9])
    got: dict[int, list[int]] = {}
    for seq_len in (2, 5, 8, 64):
        got.clear()
        for bt in iter_document_batches(a, idx, seq_len=seq_len, batch_size=3):
            for row, d in enumerate(bt["doc_index"].tolist()):
                keep = bt["labels"][row] != -100
                pad = ~keep
                assert torch.equal(bt["input_ids"][row][pad], torch.full((int(pad.sum()),), tok.pad_id))
                assert (bt["doc_ids"][row][pad] != 0).all() and (bt["doc_ids"][row][keep] == 0).all()
                got.setdefault(d, []).extend(bt["labels"][row][1:][keep[1:]].tolist())  # the row's targets
        for d in idx:  # every token of the document and its closing eot is a target exactly once
            assert got[int(d)] == tok.encode(DOCS[d]) + [tok.eot_id], seq_len


# ----------------------------------------------------------------------------- property: packing laws
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from kexaone.data.shards import build_token_shards_from_ids  # noqa: E402

EOT = 1


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    lengths=st.lists(st.integers(0, 30), min_size=1, max_size=12),
    seq_len=st.integers(1, 40),
    world=st.sampled_from([1, 2, 3]),
    seed=st.integers(0, 5),
)
def test_packing_laws(tmp_path, lengths, seq_len, world, seed):
    # Document i holds tokens 10 + i (a unique id per document), so the stream can be checked token by token.
    docs = [[10 + i] * n for i, n in enumerate(lengths)]
    shards = build_token_shards_from_ids(docs, tmp_path, vocab_size=64, eot_id=EOT)
    batch = 2 * world
    single = PackedBatches([(shards, 1.0)], seq_len, batch, seed=seed, heldout=0.0)
    ranks = [PackedBatches([(shards, 1.0)], seq_len, batch, seed=seed, rank=r, world_size=world, heldout=0.0)
             for r in range(world)]
    rows = []
    for _ in range(3):
        g = next(single)
        for r, p in enumerate(ranks):
            assert torch.equal(next(p)["input_ids"], g["input_ids"][r::world])
        ids, doc = g["input_ids"], g["doc_ids"]
        assert torch.equal(doc[:, 1:] != doc[:, :-1], ids[:, :-1] == EOT)
        assert (doc[:, 0] == 0).all()
        rows.append(ids)
    stream = torch.cat(rows).reshape(-1).tolist()
    # One epoch: every document exactly once, contiguous, each followed by one eot.
    epoch_len = sum(lengths) + len(lengths)
    seen = []
    pos = 0
    while pos < min(len(stream), epoch_len):
        if stream[pos] == EOT:
            seen.append(None)  # an empty document
            pos += 1
            continue
        d = stream[pos] - 10
        assert stream[pos:pos + lengths[d]] == [10 + d] * min(lengths[d], len(stream) - pos)  # contiguous
        seen.append(d)
        pos += lengths[d]
        if pos < len(stream):
            assert stream[pos] == EOT
        pos += 1
    if len(stream) >= epoch_len:
        named = [d for d in seen if d is not None]
        assert sorted(named) == [i for i, n in enumerate(lengths) if n > 0]


def test_line_eol_mode_keeps_line_endings_and_bad_utf8_names_the_file(tmp_path):
    f = tmp_path / "c.txt"
    f.write_bytes(b"first doc\r\n\n  \nsecond doc")
    assert list(iter_documents(str(f), txt_mode="line_eol")) == ["first doc\r\n", "second doc"]
    assert list(iter_documents(str(f))) == ["first doc", "second doc"]
    (tmp_path / "bad.txt").write_bytes(b"ok\n\xff\xfe\n")
    with pytest.raises(ValueError, match=r"bad.txt: not UTF-8 text \(byte 3"):
        list(iter_documents(str(tmp_path / "bad.txt")))
