"""LoRA through peft: an adapter trained on kexaone loads with peft onto transformers' ExaoneMoe and gives the same
logits; merging equals the adapter; a merged checkpoint loads in transformers with equal logits."""

from __future__ import annotations

import pytest
import torch

from kexaone import KExaoneConfig, KExaoneForCausalLM
from kexaone.model.lora import apply_lora, load_adapter, load_adapter_on_transformers, merge_lora, save_adapter

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

TOL = 1e-4


def _randomize_adapters(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)


def _lora_model(targets, seed=0, save_base_to=None):
    torch.manual_seed(seed)
    base = KExaoneForCausalLM(KExaoneConfig.preset("tiny")).eval()
    if save_base_to is not None:  # before wrapping: peft replaces the targeted modules in place
        base.save_pretrained(save_base_to)
    return base, apply_lora(base, rank=4, alpha=8, targets=targets)


@pytest.mark.parametrize("targets,plain_peft", [
    (("attention", "experts"), True),  # plain PeftModel.from_pretrained is exact for these
    (("attention", "dense", "shared"), False),  # peft's v4 -> v5 MoE rewrite needs our loader (see lora.py)
    (("attention", "dense", "shared", "experts"), False),
])
def test_adapter_loads_in_peft_on_transformers_with_equal_logits(tmp_path, targets, plain_peft):
    base, model = _lora_model(targets, save_base_to=tmp_path / "base")
    _randomize_adapters(model)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert not any(n.startswith("base_model.model.mtp.") or ".mlp.gate." in n for n in trainable)
    if "experts" in targets:
        assert any("experts" in n for n in trainable)
    save_adapter(model, tmp_path / "adapter", base_model_path=str(tmp_path / "base"))

    ids = torch.randint(0, base.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids).logits
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base").eval()
    with torch.no_grad():
        plain = hf(ids).logits
    if plain_peft:
        hf_lora = peft.PeftModel.from_pretrained(hf, str(tmp_path / "adapter")).eval()
    else:
        hf_lora = load_adapter_on_transformers(hf, tmp_path / "adapter").eval()
        assert hf.config.model_type == "exaone_moe"
    with torch.no_grad():
        theirs = hf_lora(ids).logits
    assert (plain - theirs).abs().max() > 1e-3  # the adapter changes the logits...
    assert (ours - theirs).abs().max() < TOL  # ...the same way in both implementations


def test_merge_equals_adapter_and_loads_in_transformers(tmp_path):
    _, model = _lora_model(("attention", "dense", "shared"))
    _randomize_adapters(model, seed=3)
    ids = torch.randint(0, 256, (2, 20), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        adapted = model(ids).logits
    merged = merge_lora(model)
    assert isinstance(merged, KExaoneForCausalLM)
    with torch.no_grad():
        assert (merged(ids).logits - adapted).abs().max() < TOL
    merged.save_pretrained(tmp_path / "merged")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        assert (hf(ids).logits - adapted).abs().max() < TOL


def test_load_adapter_back_onto_kexaone(tmp_path):
    torch.manual_seed(0)
    base = KExaoneForCausalLM(KExaoneConfig.preset("tiny")).eval()
    base_sd = {k: v.clone() for k, v in base.state_dict().items()}
    model = apply_lora(base, rank=4, targets=("attention",))
    _randomize_adapters(model)
    save_adapter(model, tmp_path / "adapter")
    ids = torch.randint(0, 256, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        want = model(ids).logits
    fresh = KExaoneForCausalLM(KExaoneConfig.preset("tiny")).eval()
    fresh.load_state_dict(base_sd)
    with torch.no_grad():
        got = load_adapter(fresh, tmp_path / "adapter")(ids).logits
    assert (got - want).abs().max() < TOL


def test_bad_arguments(tmp_path):
    base = KExaoneForCausalLM(KExaoneConfig.preset("tiny"))
    with pytest.raises(ValueError, match="rank"):
        apply_lora(base, rank=0)
    with pytest.raises(ValueError, match="unknown LoRA target"):
        apply_lora(base, rank=2, targets=("attention", "router"))
    with pytest.raises(FileNotFoundError, match="adapter_config.json"):
        load_adapter(base, tmp_path)
