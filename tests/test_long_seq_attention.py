"""The document-aligned global attention path (kexaone.model.attention._documents_varlen): equal to the masked
path on packed document rows (attention outputs and model logits), never allocates T x T, and spans tile rows."""

import torch
import torch.nn.functional as F

from kexaone.config import KExaoneConfig
from kexaone.model import attention as attn
from kexaone.model.transformer import KExaoneForCausalLM


def _packed_doc_ids(lengths_per_row: list[list[int]]) -> torch.Tensor:
    rows = []
    for lengths in lengths_per_row:
        rows.append(torch.cat([torch.full((n,), i, dtype=torch.long) for i, n in enumerate(lengths)]))
    return torch.stack(rows)


def _reference(q, k, v, doc, scale):
    """Independent reference: one dense [T, T] mask (causal and same document), one SDPA call per row."""
    T = q.shape[2]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool))
    outs = []
    for b in range(q.shape[0]):
        same = doc[b][:, None] == doc[b][None, :]
        kk = k[b:b + 1].repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        vv = v[b:b + 1].repeat_interleave(q.shape[1] // k.shape[1], dim=1)
        outs.append(F.scaled_dot_product_attention(q[b:b + 1], kk, vv, attn_mask=causal & same, scale=scale))
    return torch.cat(outs)


def test_varlen_equals_dense_reference_and_masked_path():
    torch.manual_seed(0)
    # row 0: a long document beside short ones (long > group, a group of shorts), row 1: one document, row 2:
    # many tiny documents and trailing padding as its own id (as DocumentPackedBatches pads).
    doc = _packed_doc_ids([[70, 5, 9, 3, 41], [128], [1, 2, 3, 30, 20, 40, 32]])
    B, T, H, h, D = 3, 128, 4, 2, 8
    q, k, v = torch.randn(B, H, T, D), torch.randn(B, h, T, D), torch.randn(B, h, T, D)
    ref = _reference(q, k, v, doc, 0.3)
    got = attn._documents_varlen(q, k, v, doc_BT=doc, scale=0.3, group=32)
    masked = attn._masked_chunked(q, k, v, scale=0.3, window=None, key_valid_BS=None, doc_q_BT=doc, doc_k_BS=doc)
    assert torch.allclose(got, ref, atol=1e-5), (got - ref).abs().max()
    assert torch.allclose(got, masked, atol=1e-5)
    # attend() routes packed rows without padding mask to the varlen path
    routed = attn.attend(q, k, v, scale=0.3, window=None, doc_q_BT=doc, doc_k_BS=doc)
    assert torch.allclose(routed, ref, atol=1e-5)


def test_document_spans_tile_rows_and_never_split_documents():
    doc = _packed_doc_ids([[70, 5, 9, 3, 41]])[0]
    spans = attn.document_spans(doc, group=32)
    assert spans == [(0, 70, True), (70, 87, False), (87, 128, True)]
    doc = _packed_doc_ids([[10, 10, 10, 10]])[0]
    assert attn.document_spans(doc, group=25) == [(0, 20, False), (20, 40, False)]
    assert attn.document_spans(torch.zeros(9, dtype=torch.long), group=4) == [(0, 9, True)]


def test_model_logits_equal_masked_path_on_packed_rows(monkeypatch):
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny")
    model = KExaoneForCausalLM(cfg).eval()
    doc = _packed_doc_ids([[40, 3, 17, 60, 8], [128]])
    ids = torch.randint(1, cfg.vocab_size, doc.shape)
    with torch.no_grad():
        fast = model(ids, doc_ids=doc).logits
        monkeypatch.setattr(attn, "_documents_varlen", lambda q, k, v, *, doc_BT, scale, spans=None: attn._masked_chunked(
            q, k, v, scale=scale, window=None, key_valid_BS=None, doc_q_BT=doc_BT, doc_k_BS=doc_BT))
        slow = model(ids, doc_ids=doc).logits
    assert torch.allclose(fast, slow, atol=1e-5), (fast - slow).abs().max()


def test_no_t_by_t_allocation(monkeypatch):
    """Every SDPA call of a global layer over one packed row of T = 1024 sees at most DOC_GROUP x DOC_GROUP scores
    (or one causal document), and the masked chunked path is never taken."""
    T, group = 1024, 64
    seen = []
    real = F.scaled_dot_product_attention

    def spy(q, k, v, attn_mask=None, **kw):
        seen.append((q.shape[-2], k.shape[-2], None if attn_mask is None else tuple(attn_mask.shape), kw))
        return real(q, k, v, attn_mask=attn_mask, **kw)

    monkeypatch.setattr(attn.F, "scaled_dot_product_attention", spy)
    monkeypatch.setattr(attn, "_masked_chunked", lambda *a, **k: (_ for _ in ()).throw(AssertionError("masked")))
    doc = _packed_doc_ids([[20] * 30 + [T - 600]])
    q, k, v = torch.randn(1, 2, T, 4), torch.randn(1, 2, T, 4), torch.randn(1, 2, T, 4)
    attn._documents_varlen(q, k, v, doc_BT=doc, scale=0.5, group=group)
    for tq, tk, mask, kw in seen:
        if mask is not None:
            assert mask[-1] <= group and mask[-2] <= group
        else:
            assert kw.get("is_causal")  # one whole document: flash/causal, no mask at all
    assert max(m[-1] for _, _, m, _ in seen if m is not None) <= group


def test_rows_document_spans_equal_a_per_row_reference():
    """The batched spans (one host read of all boundaries) equal spans found row by row from the ids alone."""
    g = torch.Generator().manual_seed(0)

    def reference(doc_T, group):  # independent: walk the ids, close a group when the next document overflows it
        ids = doc_T.tolist()
        docs, s = [], 0
        for t in range(1, len(ids) + 1):
            if t == len(ids) or ids[t] != ids[t - 1]:
                docs.append((s, t))
                s = t
        out, cur = [], []
        for s, e in docs:
            if cur and e - cur[0][0] > group:
                out.append((cur[0][0], cur[-1][1], len(cur) == 1))
                cur = []
            if e - s > group:
                out.append((s, e, True))
            else:
                cur.append((s, e))
        if cur:
            out.append((cur[0][0], cur[-1][1], len(cur) == 1))
        return out

    for _ in range(20):
        lengths = [[int(x) for x in torch.randint(1, 40, (6,), generator=g)] for _ in range(3)]
        T = max(sum(row) for row in lengths)
        rows = [_packed_doc_ids([row + ([T - sum(row)] if sum(row) < T else [])])[0] for row in lengths]
        doc = torch.stack(rows)
        for group in (8, 32, 64):
            assert attn.rows_document_spans(doc, group) == [reference(r, group) for r in doc]
