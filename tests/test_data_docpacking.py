"""The data protocol of every stage: the loss-mask channel of token shards and batches (round trip), the
document-aligned best-fit packer (whole documents, never cut across rows, optional no truncation, rank sharding,
exact resume), and the attention law of packed rows: the per-document log-probs of a packed batch equal those of
the documents run one by one."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kexaone.config import KExaoneConfig
from kexaone.data.docpacking import DocumentPackedBatches, best_fit_decreasing
from kexaone.data.packing import PackedBatches
from kexaone.data.shards import TokenShards, build_token_shards_from_ids
from kexaone.model.scoring import token_logprobs
from kexaone.model.transformer import KExaoneForCausalLM

EOT, PAD, V = 1, 0, 64


def docs_and_masks(lengths, seed=0):
    """Document i holds tokens 10 + i; its loss mask is a random 0/1 pattern (a prompt/answer split)."""
    rng = np.random.default_rng(seed)
    docs = [[10 + i] * n for i, n in enumerate(lengths)]
    masks = [(np.arange(n) >= rng.integers(0, n + 1)).astype(int).tolist() for n in lengths]
    return docs, masks


def test_loss_mask_round_trips_through_shards_and_batches(tmp_path):
    docs, masks = docs_and_masks([5, 9, 3, 7, 12])
    shards = build_token_shards_from_ids(docs, tmp_path, vocab_size=V, eot_id=EOT, loss_masks=masks)
    again = TokenShards.load(shards.path)
    assert again.has_loss_mask
    for i, m in enumerate(masks):
        assert again.loss_mask(i).tolist() == m and again.document(i).tolist() == docs[i]
    # Through the stream packer: each token's mask is its document's, the eot after a document takes the mask of
    # the document's last token.
    b = next(PackedBatches([(again, 1.0)], 8, 4, seed=0, heldout=0.0))
    ids, mask = b["input_ids"].reshape(-1).tolist(), b["loss_mask"].reshape(-1).tolist()
    assert len(mask) == len(ids)
    pos: dict[int, int] = {}
    for t, m, prev in zip(ids, mask, [None] + ids[:-1]):
        if t == EOT:
            d = prev - 10
            assert m == (masks[d][-1] if masks[d] else 0)
        else:
            d = t - 10
            assert m == masks[d][pos.get(d, 0)]
            pos[d] = pos.get(d, 0) + 1
    # A mask-less cache gives no loss_mask key; masks change the cache key.
    plain = build_token_shards_from_ids(docs, tmp_path, vocab_size=V, eot_id=EOT)
    assert not plain.has_loss_mask and plain.loss_mask(0) is None and plain.path != shards.path
    assert "loss_mask" not in next(PackedBatches([(plain, 1.0)], 8, 2, heldout=0.0))


def test_a_bad_loss_mask_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="loss mask of document 1 must be 0/1 values, one per token"):
        build_token_shards_from_ids([[5, 6], [7, 8, 9]], tmp_path, V, EOT, loss_masks=[[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="0/1"):
        build_token_shards_from_ids([[5, 6]], tmp_path, V, EOT, loss_masks=[[0, 2]])


def test_best_fit_decreasing():
    assert best_fit_decreasing([6, 5, 4, 3, 2], 10) == [[0, 2], [1, 3, 4]]
    # Oversized items get a bin of their own; bins never overflow; every item is placed once.
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 40, 200).tolist()
    bins = best_fit_decreasing(lengths, 32)
    assert sorted(i for b in bins for i in b) == list(range(200))
    assert all(sum(lengths[i] for i in b) <= 32 or len(b) == 1 for b in bins)
    # Best fit packs at least as tightly as one bin per item and within 25% of the volume bound here.
    assert len(bins) <= 1.25 * sum(min(x, 32) for x in lengths) / 32 + sum(x > 32 for x in lengths)


def rows_of(batch):
    """The documents of each row: lists of (token ids without the eot, mask) in row order."""
    out = []
    for r in range(batch["input_ids"].shape[0]):
        ids, doc, lab = batch["input_ids"][r], batch["doc_ids"][r], batch["labels"][r]
        row = []
        for d in torch.unique_consecutive(doc[lab != -100]).tolist():
            sel = (doc == d) & (lab != -100)
            row.append(ids[sel].tolist())
        out.append(row)
    return out


@pytest.mark.parametrize("truncate", [True, False])
def test_document_packer_keeps_documents_whole(tmp_path, truncate):
    lengths = [3, 17, 6, 30, 1, 9, 12, 4, 8, 2, 25, 5]
    docs, masks = docs_and_masks(lengths, seed=1)
    shards = build_token_shards_from_ids(docs, tmp_path, vocab_size=V, eot_id=EOT, loss_masks=masks)
    seq = 16
    packer = DocumentPackedBatches([(shards, 1.0)], seq, 2, seed=3, heldout=0.0, truncate=truncate, chunk_docs=5)
    seen = []
    for _ in range(6):
        b = next(packer)
        T = b["input_ids"].shape[1]
        assert T == seq if truncate else T >= seq
        assert torch.equal(b["loss_mask"][b["labels"] == -100], torch.zeros_like(b["loss_mask"][b["labels"] == -100]))
        for row in rows_of(b):
            for piece in row:
                d = piece[0] - 10
                want = (docs[d] + [EOT])[:seq] if truncate else docs[d] + [EOT]
                assert piece == want  # whole (or the truncated head), never continued in another row
                seen.append(d)
    # Chunks of 5 documents walk the epoch order: the first two chunks hold 10 distinct documents, the third
    # finishes the epoch (and starts the next one).
    assert len(set(seen[:10])) == 10 and set(seen[:15]) == set(range(12))
    cut = sum(max(0, n + 1 - seq) for n in lengths)
    if truncate:
        assert packer.truncated_tokens >= cut  # the 17-, 30- and 25-token documents lose their tails
    else:
        assert packer.truncated_tokens == 0


def test_document_packer_ranks_and_resume(tmp_path):
    docs, masks = docs_and_masks([3, 17, 6, 30, 1, 9, 12, 4, 8, 2, 25, 5, 7, 7, 11], seed=2)
    a = build_token_shards_from_ids(docs[:8], tmp_path, V, EOT, loss_masks=masks[:8])
    b = build_token_shards_from_ids(docs[8:], tmp_path, V, EOT, loss_masks=masks[8:])
    make = lambda r=0, w=1: DocumentPackedBatches([(a, 1.0), (b, 2.0)], 16, 4, seed=1, rank=r, world_size=w,
                                                  heldout=0.0, chunk_docs=4)
    single, ranks = make(), [make(r, 2) for r in range(2)]
    for _ in range(3):
        g = next(single)
        for r, p in enumerate(ranks):
            got = next(p)
            assert all(torch.equal(got[k], g[k][r::2]) for k in g)
    state = single.state_dict()
    expect = [next(single) for _ in range(3)]
    resumed = make()
    resumed.load_state_dict(state)
    for e in expect:
        got = next(resumed)
        assert all(torch.equal(got[k], e[k]) for k in e)
    assert resumed.tokens_consumed == single.tokens_consumed
    other = DocumentPackedBatches([(a, 1.0), (b, 2.0)], 16, 4, seed=1, heldout=0.0, chunk_docs=8)
    with pytest.raises(ValueError, match="document packing"):
        other.load_state_dict(state)


def test_packed_rows_score_like_documents_run_alone(tmp_path):
    """Attention never crosses documents: every token's log-prob in a packed batch (documents side by side, their
    positions continuing along the row) equals the log-prob of the same token with its document run alone."""
    torch.manual_seed(0)
    model = KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(vocab_size=V)).eval()
    rng = np.random.default_rng(0)
    docs = [rng.integers(2, V, n).tolist() for n in (5, 11, 3, 14, 7, 9, 2, 6)]
    shards = build_token_shards_from_ids(docs, tmp_path, vocab_size=V, eot_id=EOT)
    batch = next(DocumentPackedBatches([(shards, 1.0)], 24, 3, seed=0, heldout=0.0))
    with torch.no_grad():
        packed = token_logprobs(model, batch["input_ids"], mask=batch["labels"] != -100, doc_ids=batch["doc_ids"])
        checked = 0
        for r in range(batch["input_ids"].shape[0]):
            doc, lab = batch["doc_ids"][r], batch["labels"][r]
            for d in torch.unique(doc[lab != -100]).tolist():
                sel = (doc == d).nonzero().squeeze(1)
                alone = token_logprobs(model, batch["input_ids"][r, sel][None])[0]
                torch.testing.assert_close(packed[r, sel], alone, atol=1e-5, rtol=1e-5)
                assert packed[r, sel[0]] == 0  # a document's first token is never scored from another's context
                checked += 1
    assert checked >= 4 and (batch["doc_ids"][:, 1:] != batch["doc_ids"][:, :-1]).any()


def test_heldout_per_source(tmp_path):
    """A held-out split per source: a source with 0 trains on all its documents, the other skips its held-out ones;
    the list survives the resume state, and a wrong length is refused."""
    rng = np.random.default_rng(1)
    a = build_token_shards_from_ids([rng.integers(2, V, 6).tolist() for _ in range(30)], tmp_path / "a", V, EOT)
    b = build_token_shards_from_ids([rng.integers(2, V, 6).tolist() for _ in range(30)], tmp_path / "b", V, EOT)
    held_b = {tuple(b.document(int(d))) for d in b.split_indices(0.3)[1]}
    assert held_b
    for packer in (PackedBatches, DocumentPackedBatches):
        data = packer([(a, 1.0), (b, 1.0)], 8, 4, heldout=[0, 0.3])
        assert len(data.streams[0].doc_indices) == 30 and len(data.streams[1].doc_indices) == 30 - len(held_b)
        state = data.state_dict()
        assert state["heldout"] == [0, 0.3]
        again = packer([(a, 1.0), (b, 1.0)], 8, 4, heldout=(0, 0.3))
        again.load_state_dict(state)
        with pytest.raises(ValueError, match="heldout"):
            packer([(a, 1.0), (b, 1.0)], 8, 4, heldout=0.3).load_state_dict(state)
        with pytest.raises(ValueError, match="2 values for 1 sources|1 values for 2 sources"):
            packer([(a, 1.0), (b, 1.0)], 8, 4, heldout=[0.3])
