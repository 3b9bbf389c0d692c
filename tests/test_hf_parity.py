"""Logit parity with transformers' ExaoneMoeForCausalLM (the test oracle), both directions through saved dirs."""

from __future__ import annotations

import json
import warnings

import pytest
import torch

from kexaone import KExaoneConfig
from kexaone.model import KExaoneForCausalLM

transformers = pytest.importorskip("transformers")
from transformers import AutoModelForCausalLM, ExaoneMoeConfig, ExaoneMoeForCausalLM  # noqa: E402

TOL = 1e-4


def _base(**kw) -> KExaoneConfig:
    return KExaoneConfig.preset("tiny").replace(**kw)


CONFIGS = {
    # groups with a real group limit, window much shorter than the sequence (blocked local attention path)
    "groups-window5": _base(num_experts=8, num_experts_per_tok=2, n_group=4, topk_group=2, sliding_window=5),
    # two dense layers first, window 3, pattern LG
    "dense2-window3": _base(first_k_dense_replace=2, sliding_window=3, sliding_window_pattern="LG"),
    # the tiny preset as is (window 16 < sequence), groups 2/2
    "tiny-window16": _base(),
    # all-global model with sliding_window=None: RoPE on every layer (transformers' modeling rule)
    "no-window": _base(sliding_window=None),
    # all-global layers while a window is set: NoPE everywhere
    "all-global-nope": _base(layer_types=["full_attention"] * 4),
    # unnormalised gates, scaling 1, two shared experts, 6 heads over 3 kv heads, tied embeddings, window 7
    "nonorm-tied": _base(norm_topk_prob=False, routed_scaling_factor=1.0, num_shared_experts=2,
                         num_attention_heads=6, num_key_value_heads=3, sliding_window=7, hidden_size=48,
                         tie_word_embeddings=True),
}


def _hf_config(cfg: KExaoneConfig) -> ExaoneMoeConfig:
    d = {k: v for k, v in cfg.to_hf_dict().items() if k != "kexaone"}
    if d["sliding_window"] is None:
        # transformers 5.x's config class refuses sliding_window=None although its attention code treats None as
        # "RoPE on every layer"; build it with a window and clear the attribute on each attention module instead.
        d["sliding_window"] = 4096
    return ExaoneMoeConfig(**d)


def _hf_model(cfg: KExaoneConfig) -> ExaoneMoeForCausalLM:
    hf = ExaoneMoeForCausalLM(_hf_config(cfg)).eval()
    if cfg.sliding_window is None:
        for layer in hf.model.layers:
            layer.self_attn.sliding_window = None
    return hf


def _null_window(path) -> None:
    cfg_file = path / "config.json"
    d = json.loads(cfg_file.read_text())
    d["sliding_window"] = None
    cfg_file.write_text(json.dumps(d))


def _randomise_router_bias(model: torch.nn.Module) -> None:
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.randn(buf.shape, generator=g) * 0.2)


@pytest.fixture(params=sorted(CONFIGS))
def cfg(request) -> KExaoneConfig:
    return CONFIGS[request.param]


def test_parity_both_directions(cfg, tmp_path):
    """A dir saved by transformers loads into kexaone, and one saved by kexaone loads into transformers'
    AutoModelForCausalLM; logits agree to 1e-4 in fp32 either way."""
    ids = torch.randint(0, cfg.vocab_size, (2, 37), generator=torch.Generator().manual_seed(2))

    # transformers -> kexaone
    torch.manual_seed(0)
    hf = _hf_model(cfg)
    _randomise_router_bias(hf)
    hf.save_pretrained(tmp_path / "from_hf")
    if cfg.sliding_window is None:
        _null_window(tmp_path / "from_hf")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # transformers drops mtp.*: kexaone warns and loads without MTP
        ours = KExaoneForCausalLM.from_pretrained(tmp_path / "from_hf").eval()
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max().item() <= TOL

    # kexaone -> transformers
    if cfg.sliding_window is None:
        return  # transformers 5.x rejects sliding_window=null in config.json (its config validation wants an int)
    torch.manual_seed(1)
    ours = KExaoneForCausalLM(cfg).eval()
    _randomise_router_bias(ours)
    ours.save_pretrained(tmp_path / "from_kx", max_shard_bytes=300_000)  # sharded, with an index
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "from_kx").eval()
    assert type(hf).__name__ == "ExaoneMoeForCausalLM"
    with torch.no_grad():
        assert (hf(ids).logits - ours(ids).logits).abs().max().item() <= TOL
    # the (non-zero) router bias was carried over exactly
    first_sparse = cfg.mlp_layer_types.index("sparse")
    name = f"model.layers.{first_sparse}.mlp.gate.e_score_correction_bias"
    b_hf, b_ours = dict(hf.named_buffers())[name], dict(ours.named_buffers())[name]
    assert b_ours.abs().sum() > 0 and torch.equal(b_hf, b_ours)


def test_decode_with_cache_matches_transformers(tmp_path):
    """Token-by-token decoding through our KV cache agrees with transformers' full forward past the window."""
    cfg = CONFIGS["groups-window5"]
    torch.manual_seed(0)
    ours = KExaoneForCausalLM(cfg).eval()
    _randomise_router_bias(ours)
    ours.save_pretrained(tmp_path)
    hf = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 24), generator=torch.Generator().manual_seed(4))
    cache = ours.new_cache(1)
    with torch.no_grad():
        ref = hf(ids).logits
        steps = [ours(ids[:, :4], cache=cache).logits]
        steps += [ours(ids[:, t:t + 1], cache=cache).logits for t in range(4, 24)]
    assert (torch.cat(steps, 1) - ref).abs().max().item() <= TOL


def test_unsupported_config_in_transformers_is_still_loadable_by_us(tmp_path):
    """A model without shared experts (transformers always builds one) still round-trips through our own I/O."""
    cfg = _base(num_shared_experts=0)
    torch.manual_seed(0)
    ours = KExaoneForCausalLM(cfg).eval()
    ours.save_pretrained(tmp_path)
    back = KExaoneForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        assert torch.equal(ours(ids).logits, back(ids).logits)
