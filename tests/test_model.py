"""KExaoneForCausalLM behaviour: losses, MTP, packed documents, gradients, initialisation, bad input, meta."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kexaone import KExaoneConfig
from kexaone.model import KExaoneForCausalLM
from kexaone.model.moe import KExaoneMoE


@pytest.fixture(scope="module")
def cfg() -> KExaoneConfig:
    return KExaoneConfig.preset("tiny").replace(sliding_window=8)


@pytest.fixture(scope="module")
def model(cfg) -> KExaoneForCausalLM:
    torch.manual_seed(0)
    return KExaoneForCausalLM(cfg)


def _ids(cfg, B=2, T=24, seed=1):
    return torch.randint(0, cfg.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


def test_output_fields_and_loss_decomposition(model, cfg):
    ids = _ids(cfg)
    labels = ids.clone()
    labels[0, :5] = -100
    out = model(ids, labels=labels, return_logits=True)
    assert out.logits.shape == (2, 24, cfg.vocab_size)
    assert out.hidden_states.shape == (2, 24, cfg.hidden_size)
    assert out.mtp_logits.shape == (2, 23, cfg.vocab_size)
    expect_ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, cfg.vocab_size), labels[:, 1:].reshape(-1),
                                ignore_index=-100)
    assert torch.allclose(out.ce_loss, expect_ce, atol=1e-6)
    expect_mtp = F.cross_entropy(out.mtp_logits[:, :-1].reshape(-1, cfg.vocab_size), labels[:, 2:].reshape(-1),
                                 ignore_index=-100)
    assert torch.allclose(out.mtp_loss, expect_mtp, atol=1e-6)
    moe_aux = sum(l.mlp.last_aux_loss for l in model.model.layers if isinstance(l.mlp, KExaoneMoE))
    assert torch.allclose(out.aux_loss, moe_aux)
    assert out.aux_loss.dim() == 0 and out.aux_loss > 0
    total = out.ce_loss + cfg.mtp_loss_weight * out.mtp_loss + cfg.aux_loss_coef * out.aux_loss
    assert torch.allclose(out.loss, total)


def test_no_labels_no_losses_and_logits_to_keep(model, cfg):
    ids = _ids(cfg)
    with torch.no_grad():
        out = model(ids)
        last = model(ids, logits_to_keep=3)
    assert out.loss is None and out.ce_loss is None and out.mtp_loss is None and out.mtp_logits is None
    assert last.logits.shape == (2, 3, cfg.vocab_size)
    assert torch.allclose(last.logits, out.logits[:, -3:], atol=1e-6)
    with torch.no_grad():
        no_mtp = model(ids, labels=ids, compute_mtp=False)
    assert no_mtp.mtp_loss is None
    assert torch.allclose(no_mtp.loss, no_mtp.ce_loss + cfg.aux_loss_coef * no_mtp.aux_loss)


def test_packed_documents_are_isolated(model, cfg):
    """With doc_ids, each document's logits equal running it alone, and targets across a boundary are ignored."""
    a, b = _ids(cfg, 1, 13, seed=2), _ids(cfg, 1, 17, seed=3)
    packed = torch.cat([a, b], 1)
    doc = torch.cat([torch.zeros(1, 13), torch.ones(1, 17)], 1).long()
    with torch.no_grad():
        out = model(packed, labels=packed, doc_ids=doc, return_logits=True)
        alone_a, alone_b = model(a).logits, model(b).logits
    assert (out.logits[:, :13] - alone_a).abs().max() < 1e-4
    assert (out.logits[:, 13:] - alone_b).abs().max() < 1e-4  # RoPE is relative: positions need not restart
    V = cfg.vocab_size
    tgt = packed[:, 1:].clone()
    tgt[0, 12] = -100  # last token of document 0 must not predict the first of document 1
    expect_ce = F.cross_entropy(out.logits[:, :-1].reshape(-1, V), tgt.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.ce_loss, expect_ce, atol=1e-6)
    mtgt = packed[:, 2:].clone()
    mtgt[0, 11:13] = -100  # MTP targets two ahead: positions 11 and 12 would cross the boundary
    expect_mtp = F.cross_entropy(out.mtp_logits[:, :-1].reshape(-1, V), mtgt.reshape(-1), ignore_index=-100)
    assert torch.allclose(out.mtp_loss, expect_mtp, atol=1e-6)


def test_gradients_reach_every_trainable_parameter(cfg):
    torch.manual_seed(0)
    model = KExaoneForCausalLM(cfg)
    ids = _ids(cfg, 2, 20)
    model(ids, labels=ids).loss.backward()
    names = dict(model.named_parameters())
    no_grad = [n for n, p in names.items() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []
    for must in ("model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.gate_up_proj",
                 "model.layers.1.mlp.experts.down_proj", "model.layers.1.mlp.shared_experts.up_proj.weight",
                 "mtp.fc.weight", "mtp.layers.0.self_attn.q_proj.weight", "mtp.layers.0.mlp.down_proj.weight",
                 "mtp.pre_fc_norm_embedding.weight", "mtp.norm.weight"):
        assert must in names
    buffers = dict(model.named_buffers())
    bias = "model.layers.1.mlp.gate.e_score_correction_bias"
    assert bias in buffers and bias not in names and not buffers[bias].requires_grad
    assert buffers[bias].dtype == torch.float32


def test_gradient_checkpointing_gives_same_gradients(cfg):
    grads = []
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = KExaoneForCausalLM(cfg).train()
        model.gradient_checkpointing = ckpt
        ids = _ids(cfg, 2, 20)
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
        counts = sum(l.mlp.tokens_per_expert.sum() for l in model.model.layers if isinstance(l.mlp, KExaoneMoE))
        assert counts == 3 * 2 * 20 * cfg.num_experts_per_tok  # 3 MoE layers, counted once even when recomputed
    for n in grads[0]:
        assert torch.allclose(grads[0][n], grads[1][n], atol=1e-6), n


def test_initialisation(cfg):
    torch.manual_seed(0)
    model = KExaoneForCausalLM(cfg.replace(hidden_size=128, intermediate_size=512, vocab_size=4096))
    std = model.config.initializer_range
    for name in ("model.embed_tokens.weight", "lm_head.weight", "model.layers.0.mlp.gate_proj.weight",
                 "model.layers.1.self_attn.q_proj.weight", "model.layers.1.mlp.experts.gate_up_proj",
                 "model.layers.1.mlp.gate.weight", "mtp.fc.weight"):
        w = dict(model.named_parameters())[name]
        assert abs(w.std().item() - std) < 0.15 * std, name
        assert abs(w.mean().item()) < 0.1 * std, name
    for name, p in model.named_parameters():
        if name.endswith(("norm.weight", "layernorm.weight")):
            assert torch.equal(p, torch.ones_like(p)), name
    for name, b in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            assert torch.equal(b, torch.zeros_like(b))


def test_tied_embeddings_share_one_tensor(cfg):
    model = KExaoneForCausalLM(cfg.replace(tie_word_embeddings=True))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    untied = KExaoneForCausalLM(cfg)
    assert untied.num_parameters() - model.num_parameters() == cfg.vocab_size * cfg.hidden_size


def test_no_moe_and_no_mtp(cfg):
    dense = cfg.replace(mlp_layer_types=["dense"] * cfg.num_hidden_layers, num_nextn_predict_layers=0)
    model = KExaoneForCausalLM(dense)
    assert model.mtp is None
    ids = _ids(cfg, 1, 10)
    out = model(ids, labels=ids)
    assert out.aux_loss.item() == 0.0 and out.mtp_loss is None and out.mtp_logits is None
    with pytest.raises(ValueError, match="no MTP"):
        model(ids, compute_mtp=True)
    with pytest.raises(ValueError, match="no MTP"):
        model.mtp_forward(out.hidden_states, ids)


def test_meta_construction_counts_the_released_model():
    big = KExaoneConfig.preset("k-exaone-236b-a23b")
    model = KExaoneForCausalLM.from_config(big, device="meta")
    assert all(p.is_meta for p in model.parameters())
    total = model.num_parameters()
    mtp = total - model.num_parameters(include_mtp=False)
    assert 236.0e9 <= total - mtp <= 237.5e9, total
    assert 0.45e9 <= mtp <= 0.6e9, mtp
    with pytest.raises(ValueError, match="meta"):
        model.save_pretrained("/nonexistent-dir-never-created")


@pytest.mark.parametrize("bad,match", [
    (lambda V: torch.tensor([[1, V]]), r"token id 2048, outside \[0, 2047\] \(vocab_size 2048\)"),
    (lambda V: torch.tensor([[-1, 3]]), r"token id -1"),
    (lambda V: torch.tensor([[1.0, 2.0]]), "integer"),
    (lambda V: torch.tensor([1, 2]), "2-D"),
    (lambda V: torch.zeros(1, 0, dtype=torch.long), "empty"),
])
def test_bad_input_ids(model, cfg, bad, match):
    with pytest.raises(ValueError, match=match):
        model(bad(cfg.vocab_size))


def test_bad_arguments(model, cfg):
    ids = _ids(cfg, 2, 10)
    with pytest.raises(ValueError, match="labels"):
        model(ids, labels=ids[:, :5])
    with pytest.raises(ValueError, match="doc_ids"):
        model(ids, doc_ids=torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(ValueError, match="doc_ids"):
        model(ids, doc_ids=torch.zeros_like(ids), cache=model.new_cache(2))
    with pytest.raises(ValueError, match="logits_to_keep"):
        model(ids, logits_to_keep=-1)
    with pytest.raises(ValueError, match="logits_to_keep=0"):
        model(ids, labels=ids, logits_to_keep=2)
    with pytest.raises(ValueError, match="attention_mask"):
        model(ids, attention_mask=torch.ones(2, 3))
    with pytest.raises(ValueError, match="position_ids"):
        model(ids, position_ids=torch.zeros(3, 10, dtype=torch.long))
    with pytest.raises(ValueError, match="hidden"):
        model.mtp_forward(torch.zeros(2, 10, 7), ids)
    with pytest.raises(ValueError, match="KExaoneConfig"):
        KExaoneForCausalLM({"hidden_size": 8})


def test_no_grad_ffn_chunking_is_exact(model, cfg, monkeypatch):
    """Long no-grad forwards run the FFN in token chunks (bounded memory); logits do not change."""
    import kexaone.model.layer as layer_mod

    ids = _ids(cfg, 2, 40)
    with torch.no_grad():
        whole = model(ids)
        monkeypatch.setattr(layer_mod, "FFN_CHUNK_TOKENS", 24)  # 12 tokens per row per chunk
        chunked = model(ids)
    assert (whole.logits - chunked.logits).abs().max().item() < 1e-5
    assert torch.isfinite(chunked.aux_loss) and chunked.aux_loss > 0
