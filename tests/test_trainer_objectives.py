"""The objective protocol of the trainer: the masked-CE objective (a new loss in its own small module) against an
independent reference, accumulation with uneven masks equal to one big batch, and the single router-frozen switch
(router weights and expert biases bit-identical after training). Tiny preset, random token ids, CPU, seconds."""

from __future__ import annotations

import copy

import pytest
import torch

from kexaone.config import KExaoneConfig
from kexaone.model.balance import moe_layers
from kexaone.model.scoring import token_logprobs
from kexaone.model.transformer import KExaoneForCausalLM
from kexaone.train.config import TrainConfig
from kexaone.train.masked_ce import MaskedCEObjective
from kexaone.train.trainer import Trainer

V, T = 256, 24


def model(seed: int = 0) -> KExaoneForCausalLM:
    torch.manual_seed(seed)
    return KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(vocab_size=V))


def batch(rows: int, seed: int, mask_from: list[int]) -> dict[str, torch.Tensor]:
    """Random rows whose loss mask is 1 from position mask_from[row] on (a prompt, then the trained answer)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, V, (rows, T), generator=g)
    mask = torch.zeros(rows, T, dtype=torch.int64)
    for r, start in enumerate(mask_from):
        mask[r, start:] = 1
    return {"input_ids": ids, "labels": ids.clone(), "loss_mask": mask}


def cfg(tmp_path, **kw) -> TrainConfig:
    base = dict(max_steps=1, seq_len=T, batch_size=2, out=str(tmp_path), progress=False, tensorboard=False,
                eval_every=0, save_every=0, precision="fp32", lr=1e-3, warmup_steps=0, peak_flops=1e12,
                optimizer="adamw")
    base.update(kw)
    return TrainConfig(**base)


def test_masked_ce_matches_an_independent_reference(tmp_path):
    b = batch(2, 0, [5, 17])
    m = model()
    ref_model = copy.deepcopy(m)
    rec = Trainer(m, None, iter([b]), cfg(tmp_path), objective=MaskedCEObjective()).fit().history[0]
    with torch.no_grad():
        lp = token_logprobs(ref_model.train(), b["input_ids"], mask=b["loss_mask"].bool())
    n = int(b["loss_mask"][:, 1:].sum())
    assert rec["ce"] == pytest.approx(float(-lp.sum()) / n, rel=1e-5)
    assert rec["loss"] == rec["ce"] and "mtp" not in rec and "aux" not in rec
    assert rec["masked_fraction"] == pytest.approx(1 - n / b["labels"].numel())
    # Masked-out targets carry no gradient: changing them changes nothing.
    b2 = {**b, "labels": b["labels"].clone()}
    b2["labels"][1, -1] = (b2["labels"][1, -1] + 1) % V  # a trained target: must matter
    b3 = {**b, "labels": b["labels"].clone()}
    b3["labels"][0, 2] = (b3["labels"][0, 2] + 1) % V  # a masked-out target: must not
    r3 = Trainer(model(), None, iter([b3]), cfg(tmp_path / "c"), objective=MaskedCEObjective()).fit().history[0]
    r2 = Trainer(model(), None, iter([b2]), cfg(tmp_path / "b"), objective=MaskedCEObjective()).fit().history[0]
    assert r3["ce"] == rec["ce"] and r3["grad_norm"] == rec["grad_norm"]
    assert r2["ce"] != rec["ce"]


def test_uneven_masks_accumulate_like_one_batch(tmp_path):
    """Micro-batches with 3 and 30 trained targets: the step's loss is the mean over all 33 targets, not the mean
    of the two micro-batch means, so accumulation equals the big batch."""
    big = batch(4, 1, [22, 23, 10, 5])
    halves = [{k: v[:2] for k, v in big.items()}, {k: v[2:] for k, v in big.items()}]
    m1, m2 = model(), model()
    sgd = dict(grad_clip=0.0, lr=1.0)  # plain SGD: the update is the gradient itself (Adam's first step is ~sign)
    r1 = Trainer(m1, None, iter([big]), cfg(tmp_path / "a", batch_size=4, **sgd), objective=MaskedCEObjective(),
                 optimizer=torch.optim.SGD(m1.parameters(), lr=1.0)).fit()
    r2 = Trainer(m2, None, iter(halves), cfg(tmp_path / "b", batch_size=2, grad_accum=2, **sgd),
                 objective=MaskedCEObjective(), optimizer=torch.optim.SGD(m2.parameters(), lr=1.0)).fit()
    assert r1.history[0]["ce"] == pytest.approx(r2.history[0]["ce"], rel=1e-6)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, atol=1e-6, rtol=1e-5, msg=k)


def test_an_objective_without_a_loss_mask_is_a_clear_error(tmp_path):
    b = batch(2, 0, [0, 0])
    del b["loss_mask"]
    with pytest.raises(ValueError, match="loss_mask"):
        Trainer(model(), None, iter([b]), cfg(tmp_path), objective=MaskedCEObjective()).fit()


def test_router_frozen_leaves_router_and_biases_bit_identical(tmp_path):
    m = model()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    data = iter([batch(2, s, [0, 0]) for s in range(3)])
    res = Trainer(m, None, data, cfg(tmp_path, max_steps=3, router_frozen=True, bias_update_rate=0.1,
                                     aux_loss_coef=0.1)).fit()
    after = m.state_dict()
    router = [k for k in after if k.endswith("gate.weight") or k.endswith("e_score_correction_bias")]
    assert router and all(torch.equal(before[k], after[k]) for k in router)
    assert all(int(l.tokens_per_expert.sum()) == 0 and not l.count_tokens for l in moe_layers(m))
    assert not any(torch.equal(before[k], v) for k, v in after.items() if k.endswith("q_proj.weight"))
    assert all("max_vio" not in r for r in res.history)
    # Without the switch the same run moves both.
    m2 = model()
    Trainer(m2, None, iter([batch(2, s, [0, 0]) for s in range(3)]),
            cfg(tmp_path / "b", max_steps=3, bias_update_rate=0.1, aux_loss_coef=0.1)).fit()
    assert not all(torch.equal(before[k], m2.state_dict()[k]) for k in router if "gate.weight" in k)
    assert not all(torch.equal(before[k], m2.state_dict()[k]) for k in router if "bias" in k)


def test_term_weights_scale_loss_and_gradient(tmp_path):
    """A term's weight multiplies its share of the loss and of the gradient, the first term's included."""
    from kexaone.train.objectives import Term

    b = batch(2, 3, [4, 9])
    half = MaskedCEObjective()
    half.terms = (Term("ce", 0.5),)
    r1 = Trainer(model(), None, iter([b]), cfg(tmp_path / "a"), objective=MaskedCEObjective()).fit().history[0]
    r2 = Trainer(model(), None, iter([b]), cfg(tmp_path / "b"), objective=half).fit().history[0]
    assert r2["ce"] == r1["ce"] and r2["loss"] == 0.5 * r1["ce"]
    assert r2["grad_norm"] == pytest.approx(0.5 * r1["grad_norm"], rel=1e-6)


def test_pretrain_objective_honours_the_loss_mask(tmp_path):
    """Pre-training on masked shards: its CE term is the masked CE (same targets, same mean)."""
    b = batch(2, 4, [6, 11])
    r_mask = Trainer(model(), None, iter([b]), cfg(tmp_path / "a", mtp_loss_weight=0.0),
                     objective=None).fit().history[0]
    r_ce = Trainer(model(), None, iter([b]), cfg(tmp_path / "b"), objective=MaskedCEObjective()).fit().history[0]
    assert r_mask["ce"] == pytest.approx(r_ce["ce"], rel=1e-6) and "aux" in r_mask and "mtp" not in r_mask
