"""Chunked cross-entropy through the lm_head (kexaone/model/vocab_loss.py): the model's loss path with labels
computes ce and MTP losses without [B, T, V] logits, with the loss and every gradient equal to the full-logits path
(an independent F.cross_entropy over materialised logits), under masking, packed documents and bf16 autocast."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kexaone.config import KExaoneConfig
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.model.vocab_loss import linear_cross_entropy


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    return KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(**kw))


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("packed", [False, True])
def test_chunked_loss_and_gradients_equal_full_logits(packed):
    model = _model()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, V, (2, 40), generator=g)
    labels = ids.clone()
    labels[0, :7] = -100  # a prompt that does not count
    doc = torch.cat([torch.zeros(2, 15), torch.ones(2, 25)], 1).long() if packed else None

    full = model(ids, labels=labels, doc_ids=doc, return_logits=True)
    # independent reference: shift by hand over the materialised logits
    tgt = labels[:, 1:].clone()
    if doc is not None:
        tgt[doc[:, 1:] != doc[:, :-1]] = -100
    ref_ce = F.cross_entropy(full.logits[:, :-1].reshape(-1, V).float(), tgt.reshape(-1), ignore_index=-100)
    assert torch.allclose(full.ce_loss, ref_ce, atol=1e-6)
    full.loss.backward()
    g_full = _grads(model)
    model.zero_grad(set_to_none=True)

    import kexaone.model.vocab_loss as vl
    old = vl.CHUNK_ELEMENTS
    vl.CHUNK_ELEMENTS = 7 * V  # 7 rows per chunk: several chunks and a ragged last one
    try:
        chunked = model(ids, labels=labels, doc_ids=doc)
    finally:
        vl.CHUNK_ELEMENTS = old
    assert chunked.logits is None and chunked.mtp_logits is None
    assert torch.allclose(chunked.ce_loss, full.ce_loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(chunked.mtp_loss, full.mtp_loss, rtol=1e-5, atol=1e-6)
    assert torch.allclose(chunked.loss, full.loss, rtol=1e-5, atol=1e-6)
    chunked.loss.backward()
    g_chunk = _grads(model)
    assert g_chunk.keys() == g_full.keys()
    for n in g_full:
        assert torch.allclose(g_chunk[n], g_full[n], rtol=1e-4, atol=1e-6), (n, (g_chunk[n] - g_full[n]).abs().max())


def test_chunked_loss_under_bf16_autocast_matches_full():
    model = _model(num_nextn_predict_layers=0)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(2))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(ids, labels=ids, return_logits=True).ce_loss
        chunked = model(ids, labels=ids).ce_loss
    assert torch.allclose(chunked, full, rtol=2e-3)


def test_linear_cross_entropy_edge_cases():
    head = torch.nn.Linear(8, 11, bias=False)
    h = torch.randn(1, 5, 8, requires_grad=True)
    none = linear_cross_entropy(h, head, torch.full((1, 5), -100), 11)
    assert none.item() == 0.0
    none.backward()  # a graph, zero gradient
    assert h.grad.abs().sum() == 0
    with pytest.raises(ValueError, match="rows_per_chunk"):
        linear_cross_entropy(h, head, torch.zeros(1, 5, dtype=torch.long), 11, rows_per_chunk=0)
    t = torch.tensor([[1, 2, -100, 4, 5]])
    ref = F.cross_entropy(head(h).reshape(-1, 11), t.reshape(-1), ignore_index=-100)
    for rows in (1, 2, 100):
        assert torch.allclose(linear_cross_entropy(h, head, t, 11, rows_per_chunk=rows), ref, atol=1e-6)


@pytest.mark.parametrize("wrap,bias", [(False, True), (True, False)])
def test_fused_and_checkpointed_paths_match_autograd(wrap, bias):
    """The fused path (plain nn.Linear, here with a bias) and the checkpointed one (any other head module) give the
    loss and the gradients of hidden, weight and bias that autograd gives over full logits."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(16, 37, bias=bias)
    head = torch.nn.Sequential(lin) if wrap else lin
    h = torch.randn(2, 9, 16, requires_grad=True)
    t = torch.randint(0, 37, (2, 9))
    t[1, :3] = -100
    ref = F.cross_entropy(head(h).reshape(-1, 37), t.reshape(-1), ignore_index=-100)
    ref.backward()
    want = [h.grad.clone()] + [p.grad.clone() for p in lin.parameters()]
    h.grad = None
    lin.zero_grad(set_to_none=True)
    got = linear_cross_entropy(h, head, t, 37, rows_per_chunk=4)
    got.backward()
    assert torch.allclose(got, ref, atol=1e-6)
    for a, b in zip([h.grad] + [p.grad for p in lin.parameters()], want):
        assert torch.allclose(a, b, atol=1e-6)


def test_no_target_still_runs_the_head():
    # Under FSDP every rank must run the head's collectives; a batch with no target (a window of an answers-only
    # document) gives loss 0 and a zero gradient through the head, not a skipped head.
    head = torch.nn.Linear(8, 11, bias=False)
    h = torch.randn(2, 3, 8, requires_grad=True)
    calls = []
    head.register_forward_hook(lambda *_: calls.append(1))
    loss = linear_cross_entropy(h, head, torch.full((2, 3), -100), 11)
    loss.backward()
    assert float(loss) == 0.0 and calls and head.weight.grad is not None and not head.weight.grad.any()
