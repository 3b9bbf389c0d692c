"""SFT data: the loss mask covers exactly the assistant bodies, token by token (reference built by hand from the
format's pieces, not by the template); records in every supported shape and file format; clear errors for bad
records; too-long conversations skipped and reported, never cut; packed and unpacked losses equal."""

from __future__ import annotations

import json

import pytest
import torch

from kexaone import KExaoneConfig, KExaoneForCausalLM
from kexaone.data.conversations import (build_conversation_shards, conversation_from_record, encode_conversation,
                                        encode_conversations)
from kexaone.tokenizer import KExaoneTokenizer
from kexaone.tokenizer.specials import SPECIAL_TOKENS


@pytest.fixture(scope="module")
def tok():
    """Bytes + specials, no merges: each character of plain ASCII text is one token, so the reference mask can be
    written from the text pieces."""
    return KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])


def reference(tok, pieces):
    """ids and mask of (text, trained) pieces encoded one by one (no merges: the concatenation encodes alike)."""
    ids, mask = [], []
    for text, trained in pieces:
        t = tok.encode(text)
        ids += t
        mask += [int(trained)] * len(t)
    return ids, mask


def encode(tok, record, thinking="mixed"):
    return encode_conversation(tok, conversation_from_record(record, "test", thinking))


def test_mask_reasoning_mode_covers_think_block_answer_and_end_of_turn(tok):
    rec = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+3?"},
                        {"role": "assistant", "content": "5", "reasoning_content": "2 plus 3 is 5."}]}
    ids, mask = encode(tok, rec)
    want = reference(tok, [("<|system|>\nBe brief.<|endofturn|>\n<|user|>\n2+3?<|endofturn|>\n<|assistant|>\n", 0),
                           ("<think>\n2 plus 3 is 5.\n</think>\n\n5<|endofturn|>", 1), ("\n", 0)])
    assert (ids, mask) == want


def test_mask_non_reasoning_mode_trains_the_empty_think_block(tok):
    rec = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello", "reasoning_content": "greet back"}],
           "enable_thinking": False}
    ids, mask = encode(tok, rec)
    want = reference(tok, [("<|user|>\nhi<|endofturn|>\n<|assistant|>\n", 0),
                           ("<think>\n\n</think>\n\nhello<|endofturn|>", 1), ("\n", 0)])
    assert (ids, mask) == want
    # --thinking on overrides the record's flag: the reasoning is rendered and trained.
    ids_on, mask_on = encode(tok, rec, thinking="on")
    assert (ids_on, mask_on) == reference(tok, [("<|user|>\nhi<|endofturn|>\n<|assistant|>\n", 0),
                                                ("<think>\ngreet back\n</think>\n\nhello<|endofturn|>", 1),
                                                ("\n", 0)])
    # --thinking off drops it even when the record asks for reasoning.
    assert encode(tok, dict(rec, enable_thinking=True), thinking="off") == want


def test_mask_with_tool_calls_excludes_declarations_and_tool_results(tok):
    tools = [{"name": "add", "parameters": {"type": "object"}}]
    rec = {"tools": tools, "messages": [
        {"role": "user", "content": "add 2 3"},
        {"role": "assistant", "content": "", "reasoning_content": "use the tool",
         "tool_calls": [{"function": {"name": "add", "arguments": {"a": 2, "b": 3}}}]},
        {"role": "tool", "content": "5"},
        {"role": "assistant", "content": "It is 5.", "reasoning_content": "got 5"}]}
    ids, mask = encode(tok, rec)
    decl = '<|tool_declare|>\n<tool>{"name": "add", "parameters": {"type": "object"}}</tool><|endofturn|>\n'
    want = reference(tok, [
        (decl + "<|user|>\nadd 2 3<|endofturn|>\n<|assistant|>\n", 0),
        ('<think>\nuse the tool\n</think>\n\n<tool_call>{"name": "add", "arguments": {"a": 2, "b": 3}}</tool_call>'
         "<|endofturn|>", 1),
        ("\n<|tool|>\n<tool_result>5</tool_result><|endofturn|>\n<|assistant|>\n", 0),
        ("<think>\ngot 5\n</think>\n\nIt is 5.<|endofturn|>", 1), ("\n", 0)])
    assert (ids, mask) == want


def test_prompt_completion_records_equal_messages(tok):
    msgs = {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]}
    assert encode(tok, {"prompt": "Q", "completion": "A"}) == encode(tok, msgs)
    conv = {"prompt": [{"role": "user", "content": "Q"}], "completion": [{"role": "assistant", "content": "A"}]}
    assert encode(tok, conv) == encode(tok, msgs)


@pytest.mark.parametrize("record,needle", [
    ({"text": "hello"}, "needs `messages`"),
    ({"messages": []}, "non-empty list"),
    ({"messages": [{"role": "user", "content": "hi"}]}, "no assistant turn"),
    ({"prompt": "hi", "completion": 3}, "`completion` must be a string or a list"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], "tools": "x"},
     "`tools` must be a list"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
      "enable_thinking": "yes"}, "`enable_thinking` must be true or false"),
    ({"messages": [{"role": "bot", "content": "q"}, {"role": "assistant", "content": "a"}]}, "role must be one of"),
])
def test_bad_records_raise_clear_errors(tok, record, needle):
    with pytest.raises(ValueError, match="data.jsonl:7") as e:
        encode_conversation(tok, conversation_from_record(record, "data.jsonl:7"))
    assert needle in str(e.value)


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def _rows(n, long_every=0):
    rows = []
    for i in range(n):
        answer = "x" * (300 if long_every and i % long_every == 0 else 5)
        rows.append({"id": f"c{i}", "messages": [{"role": "user", "content": f"q{i}"},
                                                  {"role": "assistant", "content": answer}]})
    return rows


def test_too_long_conversations_are_skipped_and_reported_never_cut(tok, tmp_path):
    src = _write_jsonl(tmp_path / "data.jsonl", _rows(12, long_every=4))
    cs = build_conversation_shards(str(src), tok, tmp_path / "cache", max_seq_len=64)
    assert cs.skipped == 3 and cs.skipped_ids == ["c0", "c4", "c8"] and cs.conversations == 9
    assert cs.longest_skipped > 64
    # Every kept conversation is stored whole: its ids equal the full rendering.
    full = [encode(tok, r)[0] for r in _rows(12, long_every=4)]
    kept = [f for i, f in enumerate(full) if i % 4]
    assert [list(cs.shards.document(d)) for d in range(cs.shards.num_documents)] == kept
    with pytest.raises(ValueError, match="none of its 1 conversation.*raise --max-seq-len"):
        build_conversation_shards(str(_write_jsonl(tmp_path / "one.jsonl", _rows(1, long_every=1))), tok,
                                  tmp_path / "cache", max_seq_len=64)


def test_record_reader_formats_give_the_same_conversations(tok, tmp_path):
    datasets = pytest.importorskip("datasets")
    rows = _rows(5)
    jsonl = _write_jsonl(tmp_path / "a.jsonl", rows)
    pq_path = tmp_path / "a.parquet"
    ds = datasets.Dataset.from_list(rows)
    ds.to_parquet(str(pq_path))
    ds.save_to_disk(str(tmp_path / "hfdir"))
    got = []
    for spec in (str(jsonl), str(pq_path), str(tmp_path / "hfdir")):
        cs = build_conversation_shards(spec, tok, tmp_path / "cache", max_seq_len=256)
        got.append([list(cs.shards.document(d)) + list(cs.shards.loss_mask(d)) for d in range(5)])
    assert got[0] == got[1] == got[2]
    with pytest.raises(ValueError, match="holds text, not records"):
        (tmp_path / "t.txt").write_text("hello\n")
        build_conversation_shards(str(tmp_path / "t.txt"), tok, tmp_path / "cache", max_seq_len=64)


def test_shards_store_the_mask_and_the_packer_keeps_it(tok, tmp_path):
    from kexaone.data.docpacking import DocumentPackedBatches

    src = _write_jsonl(tmp_path / "d.jsonl", _rows(6))
    cs = build_conversation_shards(str(src), tok, tmp_path / "cache", max_seq_len=128)
    want = [encode(tok, r) for r in _rows(6)]
    for d, (ids, mask) in enumerate(want):
        assert list(cs.shards.document(d)) == ids and list(cs.shards.loss_mask(d)) == mask
    batch = next(iter(DocumentPackedBatches([(cs.shards, 1.0)], 128, 2, heldout=0)))
    # Every row: whole conversations, each followed by an untrained eot, then untrained padding.
    for ids_row, mask_row, doc_row in zip(batch["input_ids"], batch["loss_mask"], batch["doc_ids"]):
        for k in doc_row.unique().tolist():
            sel = doc_row == k
            ids_k, mask_k = ids_row[sel].tolist(), mask_row[sel].tolist()
            match = [(i, m) for i, m in want if ids_k[:len(i)] == i]
            if not match:
                assert sum(mask_k) == 0  # padding
                continue
            i, m = match[0]
            assert ids_k == i + [tok.eot_id] and mask_k == m + [0]


def _tiny_model(tok):
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                               eos_token_id=tok.eos_id, bos_token_id=None)
    return KExaoneForCausalLM(cfg).eval()


def test_packed_and_unpacked_losses_are_equal(tok, tmp_path):
    """The SFT objective (CE + MTP on the assistant targets) over best-fit packed rows equals the same conversations
    each alone in a padded row: sums and target counts of both terms."""
    from kexaone.data.docpacking import DocumentPackedBatches, best_fit_decreasing
    from kexaone.train.sft_objective import SFTObjective

    rows = _rows(8)
    for i, r in enumerate(rows):
        r["messages"][1]["reasoning_content"] = "think " * (i % 3)
    src = _write_jsonl(tmp_path / "p.jsonl", rows)
    cs = build_conversation_shards(str(src), tok, tmp_path / "cache", max_seq_len=160)
    model = _tiny_model(tok)
    obj = SFTObjective(0.05, 0.0)

    def totals(batches):
        sums, counts = {"ce": 0.0, "mtp": 0.0}, {"ce": 0.0, "mtp": 0.0}
        with torch.no_grad():
            for b in batches:
                n = obj.denominators(b)
                values, _ = obj.loss(model, b)
                for k in sums:  # mean terms: the trainer multiplies by the micro-batch's count
                    sums[k] += float(values[k]) * n[k]
                    counts[k] += n[k]
        return sums, counts

    lengths = [int(n) + 1 for n in cs.shards.doc_lengths()]
    n_rows = len(best_fit_decreasing(lengths, 160))
    assert n_rows < 8  # packing puts several conversations in a row
    # One chunk of 8 conversations = one epoch = exactly the rows of the first batch.
    packed = next(iter(DocumentPackedBatches([(cs.shards, 1.0)], 160, n_rows, heldout=0, chunk_docs=8)))
    real = packed["labels"] != -100
    assert sum(len(set(d[r].tolist())) for d, r in zip(packed["doc_ids"], real)) == 8

    alone = []
    for d in range(cs.shards.num_documents):
        ids = [int(x) for x in cs.shards.document(d)] + [tok.eot_id]
        mask = [int(x) for x in cs.shards.loss_mask(d)] + [0]
        T = len(ids)
        alone.append({"input_ids": torch.tensor([ids]), "labels": torch.tensor([ids]),
                      "doc_ids": torch.zeros(1, T, dtype=torch.long), "loss_mask": torch.tensor([mask])})
    (ps, pc), (us, uc) = totals([packed]), totals(alone)
    assert pc == uc and pc["ce"] == sum(sum(cs.shards.loss_mask(d)) for d in range(8))
    for k in ps:
        assert ps[k] == pytest.approx(us[k], rel=1e-5), k


def test_sft_objective_refuses_batches_without_a_mask():
    from kexaone.train.sft_objective import SFTObjective

    with pytest.raises(ValueError, match="loss_mask"):
        SFTObjective(0.05, 0.0).denominators({"input_ids": torch.zeros(1, 4, dtype=torch.long),
                                              "labels": torch.zeros(1, 4, dtype=torch.long)})


def test_encode_conversations_counts_the_separator(tok):
    conv = conversation_from_record({"messages": [{"role": "user", "content": "q"},
                                                  {"role": "assistant", "content": "a"}]}, "w")
    n = len(encode_conversation(tok, conv)[0])
    assert len(encode_conversations([conv], tok, n + 1)[0]) == 1
    assert encode_conversations([conv], tok, n)[3]["skipped"] == 1


def _text_docs(path, n):
    """Plain pre-training text, one JSONL document each, all distinct (so each has its own content hash)."""
    return _write_jsonl(path, [{"text": f"plain document {i} " + "abc" * (i % 5 + 1)} for i in range(n)])


def test_rehearsal_mixes_pretraining_rows_with_full_loss_and_never_its_heldout_documents(tok, tmp_path,
                                                                                         monkeypatch):
    from kexaone.train.distributed import DistInfo
    from kexaone.train.sft import SFTConfig, build_sft_data

    monkeypatch.setenv("KEXAONE_CACHE", str(tmp_path / "cache"))
    conv = _write_jsonl(tmp_path / "conv.jsonl", _rows(40))
    text = _text_docs(tmp_path / "text.jsonl", 200)
    cfg = SFTConfig(data=[str(conv)], rehearsal=[str(text)], rehearsal_share=0.4, rehearsal_heldout=0.1,
                    seq_len=64, batch_size=8, acceptance_prompts=0)
    data = build_sft_data(cfg, tok, DistInfo())
    (reh,) = data.rehearsal
    assert reh["documents"] == 200 and 0 < reh["training_documents"] < 200 and reh["row_share"] == pytest.approx(0.4)
    text_shards = data.batches.sources[1]
    heldout = {tuple(text_shards.document(int(d))) for d in text_shards.split_indices(0.1)[1]}
    trained_text = {tuple(text_shards.document(int(d))) for d in text_shards.split_indices(0.1)[0]}
    assert heldout and not heldout & trained_text
    convs = [encode(tok, r) for r in _rows(40)]
    rows = {"text": 0, "conversation": 0}
    for _ in range(30):
        batch = next(data.batches)
        for ids_row, mask_row, doc_row in zip(batch["input_ids"], batch["loss_mask"], batch["doc_ids"]):
            pieces = [(ids_row[doc_row == k].tolist(), mask_row[doc_row == k].tolist()) for k in doc_row.unique()]
            real = [(i, m) for i, m in pieces if any(m)]
            kinds = set()
            for ids_k, mask_k in real:
                body = tuple(ids_k[:-1])
                if body in trained_text:  # rehearsal: every token trained, the eot too
                    kinds.add("text")
                    assert all(mask_k)
                else:
                    assert body not in heldout
                    i, m = next((i, m) for i, m in convs if ids_k[:len(i)] == i)
                    assert mask_k == m + [0]
                    kinds.add("conversation")
            assert len(kinds) == 1  # a row comes from one source
            rows[kinds.pop()] += 1
    share = rows["text"] / (rows["text"] + rows["conversation"])
    assert 0.3 < share < 0.5, rows  # 240 rows drawn at 0.4


def test_rehearsal_config_errors(tok, tmp_path, monkeypatch):
    from kexaone.train.distributed import DistInfo
    from kexaone.train.sft import SFTConfig, build_sft_data

    with pytest.raises(ValueError, match="rehearsal_share"):
        SFTConfig(rehearsal_share=1.0)
    with pytest.raises(ValueError, match="rehearsal_heldout"):
        SFTConfig(rehearsal_heldout=2.5)
    assert SFTConfig(rehearsal_heldout=40).rehearsal_split() == 40
    assert isinstance(SFTConfig(rehearsal_heldout=40.0).rehearsal_split(), int)
    monkeypatch.setenv("KEXAONE_CACHE", str(tmp_path / "cache"))
    conv = _write_jsonl(tmp_path / "conv.jsonl", _rows(4))
    one = _text_docs(tmp_path / "one.jsonl", 1)
    cfg = SFTConfig(data=[str(conv)], rehearsal=[str(one)], rehearsal_heldout=0.999, seq_len=64, batch_size=2,
                    acceptance_prompts=0)
    with pytest.raises(ValueError, match="every document is held out"):
        build_sft_data(cfg, tok, DistInfo())
