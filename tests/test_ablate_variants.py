"""The ablation variants change exactly the fields they claim; the model switches they use (QK-norm off, RoPE on
global layers, capacity factor with token dropping) do what they say, and are off by default."""

import dataclasses
import math

import pytest
import torch

from kexaone.config import KExaoneConfig
from kexaone.pipeline.ablate import BUDGETS, train_config
from kexaone.pipeline.ablate_variants import BASELINE, VARIANTS, apply_variant, parse_variants


def _base_cfg(tmp_path):
    return train_config(tmp_path, BUDGETS["cpu-quick"], VARIANTS[BASELINE], seed=0)


def test_parse_variants_baseline_first_and_unknown_names(tmp_path):
    assert [v.name for v in parse_variants("no-mtp,baseline,no-mtp")] == ["baseline", "no-mtp"]
    assert [v.name for v in parse_variants("all")] == list(VARIANTS)
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['nope'\].*window-512"):
        parse_variants("nope,window-512")


def test_required_variants_exist():
    need = {"window-512", "window-4096", "all-global", "global-rope", "no-qk-norm", "no-mtp", "mtp-0.3",
            "no-bias-update", "no-seq-aux", "capacity-1.25", "bpe", "adamw", "fp8"}
    assert need <= set(VARIANTS)


@pytest.mark.parametrize("name", [n for n in VARIANTS if n != BASELINE])
def test_variant_changes_exactly_its_fields(tmp_path, name):
    v = VARIANTS[name]
    budget = BUDGETS["cpu-quick"]
    base = _base_cfg(tmp_path)
    cfg = train_config(tmp_path, budget, v, seed=0)
    assert cfg.out == str(tmp_path / "runs" / name / "seed0" / "train")
    cfg = dataclasses.replace(cfg, out=base.out)  # each run has its own directory; nothing else may differ
    a, b = dataclasses.asdict(base), dataclasses.asdict(cfg)
    changed = {k for k in a if a[k] != b[k]}
    claimed = {k for k in v.train if a[k] != b[k]} | ({"model_overrides"} if v.model else set())
    if v.tokenizer != "superbpe":
        claimed.add("tokenizer")
        assert cfg.tokenizer.endswith("/bpe")
    assert changed == claimed, name
    # model overrides: the budget's plus exactly the variant's keys
    diff = {k for k in set(a["model_overrides"]) | set(b["model_overrides"])
            if a["model_overrides"].get(k, "<unset>") != b["model_overrides"].get(k, "<unset>")}
    assert diff == {k for k in v.model if a["model_overrides"].get(k, "<unset>") != v.model[k]}
    # the model config: only the claimed fields (and what they derive: layer types) differ from the baseline
    pre = KExaoneConfig.preset(budget.preset)
    m0 = pre.replace(**base.model_overrides)
    m1 = pre.replace(**cfg.model_overrides)
    d0, d1 = dataclasses.asdict(m0), dataclasses.asdict(m1)
    mchanged = {k for k in d0 if d0[k] != d1[k]} - {"layer_types"}
    assert mchanged == {k for k in v.model if d0[k] != v.model[k]}
    if "lr" in v.train:
        assert cfg.lr == budget.adamw_variant_lr


def test_apply_variant_rejects_unknown_fields(tmp_path):
    from kexaone.pipeline.ablate_variants import Variant

    base = _base_cfg(tmp_path)
    with pytest.raises(ValueError, match="unknown KExaoneConfig field"):
        apply_variant(Variant("x", "", model={"nope": 1}), base, BUDGETS["smoke"])
    with pytest.raises(ValueError, match="unknown TrainConfig field"):
        apply_variant(Variant("x", "", train={"nope": 1}), base, BUDGETS["smoke"])
    with pytest.raises(ValueError, match="tokenizer must be one of"):
        Variant("x", "", tokenizer="wordpiece")


# ---------------------------------------------------------------------------------------------- model switches
def test_switches_default_off_and_roundtrip():
    c = KExaoneConfig.preset("tiny")
    assert c.qk_norm and not c.global_rope and c.moe_capacity_factor is None
    c2 = c.replace(qk_norm=False, global_rope=True, moe_capacity_factor=1.25)
    back = KExaoneConfig.from_hf_dict(c2.to_hf_dict())
    assert (back.qk_norm, back.global_rope, back.moe_capacity_factor) == (False, True, 1.25)
    with pytest.raises(ValueError, match="moe_capacity_factor"):
        c.replace(moe_capacity_factor=0)


def test_global_rope_puts_rope_on_every_layer():
    c = KExaoneConfig.preset("tiny")
    assert [c.uses_rope(i) for i in range(4)] == [True, True, True, False]
    assert all(c.replace(global_rope=True).uses_rope(i) for i in range(4))


def _attn(config):
    from kexaone.model.attention import Attention, AttentionInputs

    torch.manual_seed(0)
    att = Attention(config, 3, sliding=False, use_rope=False)
    x = torch.randn(2, 5, config.hidden_size)
    inputs = AttentionInputs(token_valid_BT=None, doc_ids_BT=None) if "doc_ids_BT" in \
        AttentionInputs.__dataclass_fields__ else AttentionInputs()
    return att, x, inputs


def test_qk_norm_off_skips_the_norms():
    c = KExaoneConfig.preset("tiny")
    att, x, inp = _attn(c.replace(qk_norm=False))
    y0 = att(x, None, inp)
    with torch.no_grad():
        att.q_norm.weight.mul_(3.0)  # unused when QK-norm is off
    torch.testing.assert_close(att(x, None, inp), y0)
    # reference: plain softmax attention of the raw projections (GQA heads repeated), causal
    B, T, _ = x.shape
    q = att.q_proj(x).view(B, T, 4, 16).transpose(1, 2)
    k = att.k_proj(x).view(B, T, 2, 16).transpose(1, 2).repeat_interleave(2, dim=1)
    v = att.v_proj(x).view(B, T, 2, 16).transpose(1, 2).repeat_interleave(2, dim=1)
    s = q @ k.transpose(-1, -2) / 4.0
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), -math.inf)
    ref = att.o_proj((s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, 64))
    torch.testing.assert_close(y0, ref, atol=1e-5, rtol=1e-5)
    att_on, _, _ = _attn(c)
    assert not torch.allclose(att_on(x, None, inp), y0, atol=1e-4)


def _reference_keep(idx, E, factor):
    n, k = idx.shape
    cap = math.ceil(factor * n * k / E)
    used = [0] * E
    keep = torch.zeros(n, k, dtype=torch.bool)
    for t in range(n):
        for s in range(k):
            e = int(idx[t, s])
            if used[e] < cap:
                keep[t, s] = True
                used[e] += 1
    return keep


def test_capacity_keep_matches_a_loop():
    from kexaone.model.moe import capacity_keep

    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 3, (40, 2), generator=g)  # skewed: only 3 of 8 experts used
    for f in (0.5, 1.0, 1.25, 4.0):
        torch.testing.assert_close(capacity_keep(idx, 8, f), _reference_keep(idx, 8, f))
    assert bool(capacity_keep(idx, 8, 100.0).all())


def test_moe_capacity_drops_pairs_and_is_dropless_when_large():
    from kexaone.model.moe import KExaoneMoE, capacity_keep

    c = KExaoneConfig.preset("tiny")
    torch.manual_seed(0)
    dropless = KExaoneMoE(c)
    x = torch.randn(2, 16, c.hidden_size)
    y_ref = dropless(x)
    big = KExaoneMoE(c.replace(moe_capacity_factor=100.0))
    big.load_state_dict(dropless.state_dict())
    torch.testing.assert_close(big(x), y_ref)
    assert big.last_dropped_fraction == 0.0
    small = KExaoneMoE(c.replace(moe_capacity_factor=0.5))
    small.load_state_dict(dropless.state_dict())
    y = small(x)
    # reference: dropless experts with the dropped pairs' gate weights zeroed
    xn = x.reshape(-1, c.hidden_size)
    _, w, idx = dropless.gate(xn)
    keep = capacity_keep(idx, c.num_experts, 0.5)
    assert 0 < small.last_dropped_fraction == pytest.approx(1 - keep.float().mean().item())
    ref = dropless.experts(xn, idx, w * keep) + dropless.shared_experts(xn)
    torch.testing.assert_close(y.reshape(-1, c.hidden_size), ref)


@pytest.mark.parametrize("budget", list(BUDGETS))
def test_every_variant_builds_a_valid_model_config_on_every_budget(tmp_path, budget):
    b = BUDGETS[budget]
    for v in VARIANTS.values():
        cfg = train_config(tmp_path, b, v, seed=0)
        c = KExaoneConfig.preset(b.preset).replace(**cfg.model_overrides)
        for k, want in v.model.items():
            assert getattr(c, k) == want
    assert b.pipeline_budget().train_steps == b.train_steps


def test_learning_rate_sweep_points(tmp_path):
    from kexaone.pipeline.ablate_variants import get_variant, sweep_family

    budget = BUDGETS["cpu-quick"]
    v = get_variant("adamw@lr=1e-2")
    assert v.name == "adamw@lr=0.01" and sweep_family(v.name) == "adamw"  # one canonical spelling, one directory
    cfg = train_config(tmp_path, budget, v, seed=0)
    assert (cfg.optimizer, cfg.lr) == ("adamw", 0.01)
    assert cfg.out == str(tmp_path / "runs" / "adamw@lr=0.01" / "seed0" / "train")
    base = train_config(tmp_path, budget, get_variant("baseline@lr=0.001"), seed=0)
    assert (base.optimizer, base.lr, base.adamw_lr) == (_base_cfg(tmp_path).optimizer, 0.001, budget.adamw_lr)
    names = [x.name for x in parse_variants("adamw@lr=0.003,adamw,adamw@lr=3e-3,baseline@lr=1e-3")]
    assert names == ["baseline", "adamw@lr=0.003", "adamw", "baseline@lr=0.001"]
    assert len(parse_variants("all,adamw@lr=0.01")) == len(VARIANTS) + 1
    for bad, msg in (("adamw@lr=-1", "positive"), ("adamw@lr=x", "positive"), ("adamw@lr=inf", "positive"),
                     ("nope@lr=0.1", "unknown"), ("adamw@wd=0.1", "unknown")):
        with pytest.raises(ValueError, match=msg):
            get_variant(bad)
    with pytest.raises(ValueError, match=r"\['adamw@lr=0'\]"):
        parse_variants("adamw@lr=0")
