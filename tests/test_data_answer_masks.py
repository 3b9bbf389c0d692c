"""Answer spans in text sources: a JSONL record's `"answers"` makes only the answer tokens training targets
(the loss-mask channel of the token shards), the other documents keep every token; packed batches carry the mask
and the pre-training objective trains on exactly those targets."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kexaone.data.packing import PackedBatches
from kexaone.data.shards import answer_mask, build_token_shards
from kexaone.data.sources import Document, iter_tagged_documents

PLAIN = [f"plain document {i} with ordinary words and nothing to copy." for i in range(12)]


@pytest.fixture(scope="module")
def tok():
    from kexaone.tokenizer.superbpe import train_superbpe

    texts = PLAIN + [f"key k{i} = v{i * 7}. query k{i} -> v{i * 7}" for i in range(60)]
    return train_superbpe(iter(texts * 3), 400, workers=1, show_progress=False)


def _recall_doc(i: int) -> tuple[str, list[list[int]]]:
    text = f"key k{i} = v{i * 7}. query k{i} -> v{i * 7}"
    start = text.rindex("v")
    return text, [[start, len(text)]]


def test_answer_mask_marks_overlapping_tokens():
    offsets = [(0, 3), (3, 5), (5, 9), (9, 10)]
    assert answer_mask(offsets, [(4, 6)]).tolist() == [0, 1, 1, 0]
    assert answer_mask(offsets, [(0, 1), (9, 10)]).tolist() == [1, 0, 0, 1]
    assert answer_mask([], [(0, 1)]).tolist() == []


def test_jsonl_answers_become_the_loss_mask(tok, tmp_path):
    rows = [{"text": t} for t in PLAIN[:3]]  # documents without answers come first: their mask is back-filled
    for i in range(4):
        text, spans = _recall_doc(i)
        rows.append({"text": text, "answers": spans})
    f = tmp_path / "mixed.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    docs = list(iter_tagged_documents(str(f)))
    assert docs[0].answers is None and docs[3].answers == ((docs[3].text.rindex("v"), len(docs[3].text)),)

    shards = build_token_shards(str(f), tok, tmp_path / "cache", num_workers=2)
    assert shards.has_loss_mask
    for d in range(3):
        assert shards.loss_mask(d).tolist() == [1] * len(shards.document(d))
    for d in range(3, 7):
        ids, offsets = tok.encode_with_offsets(docs[d].text)
        mask = shards.loss_mask(d)
        assert shards.document(d).tolist() == ids
        start = docs[d].answers[0][0]
        # exactly the tokens that reach into the answer are targets, and the answer is not empty of them
        assert mask.tolist() == [int(e > start) for _s, e in offsets] and mask.sum() >= 1
        assert tok.decode([t for t, m in zip(ids, mask) if m]).endswith(f"v{(d - 3) * 7}")


def test_answers_change_the_cache_key_and_plain_sources_have_no_mask(tok, tmp_path):
    text, spans = _recall_doc(1)
    plain = build_token_shards([Document(text, "r")] + [Document(t) for t in PLAIN], tok, tmp_path, num_workers=1)
    masked = build_token_shards([Document(text, "r", tuple(map(tuple, spans)))] + [Document(t) for t in PLAIN],
                                tok, tmp_path, num_workers=1)
    assert not plain.has_loss_mask and masked.has_loss_mask
    assert plain.path != masked.path


@pytest.mark.parametrize("answers, message", [
    ("0-3", "list of \\[start, end\\]"), ([[0, 3, 4]], "list of \\[start, end\\]"),
    ([[5, 3]], "not within"), ([[0, 999]], "not within"),
])
def test_bad_answer_spans_name_the_line(tmp_path, answers, message):
    f = tmp_path / "bad.jsonl"
    f.write_text(json.dumps({"text": "ok"}) + "\n" + json.dumps({"text": "some text", "answers": answers}) + "\n")
    with pytest.raises(ValueError, match=f"bad.jsonl:2: .*{message}"):
        list(iter_tagged_documents(str(f)))


def test_packed_batches_carry_the_mask_and_the_objective_trains_on_answers_only(tok, tmp_path):
    from kexaone.config import KExaoneConfig
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.train.objectives import PretrainObjective, loss_targets

    docs = [Document(*_recall_doc(i)[:1], "retrieval", tuple(map(tuple, _recall_doc(i)[1]))) for i in range(30)]
    masked = build_token_shards(docs, tok, tmp_path, num_workers=1)
    plain = build_token_shards([Document(t) for t in PLAIN * 3], tok, tmp_path, num_workers=1)
    batches = PackedBatches([(masked, 1.0), (plain, 1.0)], seq_len=32, batch_size=4, seed=0)
    batch = next(iter(batches))
    assert batch["loss_mask"].shape == batch["input_ids"].shape
    share = batch["loss_mask"].float().mean().item()
    assert 0.0 < share < 1.0  # answers only in the recall rows, everything in the plain rows

    torch.manual_seed(0)
    config = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size)
    model = KExaoneForCausalLM(config)
    objective = PretrainObjective.for_model(model)
    denominators = objective.denominators(batch)
    targets = loss_targets(batch)
    assert (targets[batch["loss_mask"] == 0] == -100).all()
    assert denominators["ce"] < int((batch["labels"] != -100).sum())
    assert np.isfinite(float(objective.loss(model, batch)[0]["ce"].detach()))
