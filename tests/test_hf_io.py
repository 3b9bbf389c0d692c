"""Hugging Face checkpoint I/O: on-disk layout, sharding, dtype, atomicity and the errors a user can cause."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from kexaone import KExaoneConfig
from kexaone.model import KExaoneForCausalLM
from kexaone.model import hf as hf_mod


@pytest.fixture(scope="module")
def model() -> KExaoneForCausalLM:
    torch.manual_seed(0)
    m = KExaoneForCausalLM(KExaoneConfig.preset("tiny")).eval()
    with torch.no_grad():
        for name, b in m.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.normal_(0, 0.1)
    return m


@pytest.fixture(scope="module")
def saved(model, tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    model.save_pretrained(d)
    return d


def _keys(d):
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        with safe_open(str(f), "pt") as h:
            for k in h.keys():
                out[k] = h.get_tensor(k)
    return out


def _same(a: KExaoneForCausalLM, b: KExaoneForCausalLM) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k].to(sa[k].dtype)) for k in sa)


def test_on_disk_layout(model, saved):
    cfg = model.config
    keys = _keys(saved)
    E, inter, H = cfg.num_experts, cfg.moe_intermediate_size, cfg.hidden_size
    for e in range(E):
        assert keys[f"model.layers.1.mlp.experts.{e}.gate_proj.weight"].shape == (inter, H)
        assert keys[f"model.layers.1.mlp.experts.{e}.up_proj.weight"].shape == (inter, H)
        assert keys[f"model.layers.1.mlp.experts.{e}.down_proj.weight"].shape == (H, inter)
    stacked = model.model.layers[1].mlp.experts
    assert torch.equal(keys["model.layers.1.mlp.experts.3.gate_proj.weight"], stacked.gate_up_proj[3, :inter])
    assert torch.equal(keys["model.layers.1.mlp.experts.3.up_proj.weight"], stacked.gate_up_proj[3, inter:])
    assert torch.equal(keys["model.layers.1.mlp.experts.3.down_proj.weight"], stacked.down_proj[3])
    bias = keys["model.layers.1.mlp.e_score_correction_bias"]
    assert bias.dtype == torch.float32 and torch.equal(bias, model.model.layers[1].mlp.gate.e_score_correction_bias)
    assert "model.layers.1.mlp.gate.weight" in keys
    assert not any("gate_up_proj" in k or k.endswith("experts.down_proj") or ".gate.e_score" in k for k in keys)
    for k in ("mtp.fc.weight", "mtp.pre_fc_norm_embedding.weight", "mtp.pre_fc_norm_hidden.weight",
              "mtp.norm.weight", "mtp.layers.0.self_attn.q_norm.weight", "mtp.layers.0.mlp.gate_proj.weight",
              "model.layers.0.mlp.gate_proj.weight", "model.norm.weight", "model.embed_tokens.weight",
              "lm_head.weight"):
        assert k in keys, k
    assert keys["mtp.fc.weight"].shape == (H, 2 * H)
    cfg_json = json.loads((saved / "config.json").read_text())
    assert cfg_json["model_type"] == "exaone_moe" and cfg_json["architectures"] == ["ExaoneMoeForCausalLM"]
    assert cfg_json["dtype"] == "float32"
    with safe_open(str(saved / "model.safetensors"), "pt") as h:
        assert h.metadata() == {"format": "pt"}


def test_roundtrip_single_file(model, saved):
    back = KExaoneForCausalLM.from_pretrained(saved)
    assert _same(model, back)
    assert not (saved / "model.safetensors.index.json").exists()


def test_sharded_roundtrip_and_index(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_bytes=150_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert len(shards) > 2 and set(index["weight_map"].values()) == set(shards)
    assert shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    total = sum(t.numel() * t.element_size() for t in _keys(tmp_path).values())
    assert index["metadata"]["total_size"] == total
    assert _same(model, KExaoneForCausalLM.from_pretrained(tmp_path))
    # a later single-file save into the same directory removes the stale index and shards
    model.save_pretrained(tmp_path)
    assert not (tmp_path / "model.safetensors.index.json").exists()
    assert not list(tmp_path.glob("model-*.safetensors"))
    assert _same(model, KExaoneForCausalLM.from_pretrained(tmp_path))


def test_dtype_options(model, tmp_path):
    model.save_pretrained(tmp_path, dtype=torch.bfloat16)
    keys = _keys(tmp_path)
    assert keys["model.layers.1.mlp.experts.0.up_proj.weight"].dtype == torch.bfloat16
    assert keys["model.layers.1.mlp.e_score_correction_bias"].dtype == torch.float32
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == "bfloat16"
    bf = KExaoneForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    assert bf.lm_head.weight.dtype == torch.bfloat16
    assert bf.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    f32 = KExaoneForCausalLM.from_pretrained(tmp_path)
    assert f32.lm_head.weight.dtype == torch.float32
    assert torch.equal(f32.lm_head.weight, model.lm_head.weight.to(torch.bfloat16).float())
    with pytest.raises(ValueError, match="dtype"):
        KExaoneForCausalLM.from_pretrained(tmp_path, dtype=torch.int8)


def test_tied_embeddings_roundtrip(tmp_path):
    m = KExaoneForCausalLM(KExaoneConfig.preset("tiny").replace(tie_word_embeddings=True))
    m.save_pretrained(tmp_path)
    assert "lm_head.weight" not in _keys(tmp_path)
    back = KExaoneForCausalLM.from_pretrained(tmp_path)
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert _same(m, back)


def test_checkpoint_without_mtp(model, tmp_path):
    model.save_pretrained(tmp_path)
    kept = {k: v for k, v in _keys(tmp_path).items() if not k.startswith("mtp.")}
    save_file(kept, str(tmp_path / "model.safetensors"), metadata={"format": "pt"})
    with pytest.warns(UserWarning, match="MTP disabled"):
        no_mtp = KExaoneForCausalLM.from_pretrained(tmp_path)
    assert no_mtp.mtp is None and no_mtp.config.num_nextn_predict_layers == 0
    fresh = KExaoneForCausalLM.from_pretrained(tmp_path, init_missing_mtp=True)
    assert fresh.mtp is not None
    w = fresh.mtp.fc.weight
    assert torch.isfinite(w).all() and abs(w.std().item() - 0.02) < 0.005
    assert torch.equal(fresh.mtp.norm.weight, torch.ones_like(fresh.mtp.norm.weight))


def test_interrupted_save_keeps_previous_checkpoint(model, tmp_path, monkeypatch):
    model.save_pretrained(tmp_path, max_shard_bytes=150_000)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    import safetensors.torch as st

    calls = {"n": 0}
    real = st.save_file

    def failing(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real(*a, **k)

    monkeypatch.setattr(st, "save_file", failing)
    other = KExaoneForCausalLM(model.config)
    with pytest.raises(OSError, match="disk full"):
        other.save_pretrained(tmp_path, max_shard_bytes=150_000)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no temporary file left, nothing replaced
    assert _same(model, KExaoneForCausalLM.from_pretrained(tmp_path))


# ------------------------------------------------------------------------------------------------ errors
def test_missing_directory_config_and_weights(tmp_path, saved):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        KExaoneForCausalLM.from_pretrained(tmp_path / "nope")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(FileNotFoundError, match="not a directory"):
        KExaoneForCausalLM.from_pretrained(f)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        KExaoneForCausalLM.from_pretrained(empty)
    (empty / "config.json").write_text((saved / "config.json").read_text())
    (empty / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(FileNotFoundError, match="pickle"):
        KExaoneForCausalLM.from_pretrained(empty)


def test_corrupt_safetensors(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ValueError, match="not a valid safetensors"):
        KExaoneForCausalLM.from_pretrained(tmp_path)
    good = (saved / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(ValueError, match="model.safetensors"):
        KExaoneForCausalLM.from_pretrained(tmp_path)


def test_missing_unexpected_and_misshapen_tensors(saved, tmp_path):
    (tmp_path / "config.json").write_text((saved / "config.json").read_text())
    keys = _keys(saved)

    dropped = {k: v for k, v in keys.items() if k != "model.layers.2.mlp.experts.5.up_proj.weight"}
    save_file(dropped, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"missing 1 tensor.*experts\.5\.up_proj"):
        KExaoneForCausalLM.from_pretrained(tmp_path)

    extra = dict(keys, **{"model.layers.9.self_attn.q_proj.weight": torch.zeros(2, 2)})
    save_file(extra, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"does not use.*layers\.9"):
        KExaoneForCausalLM.from_pretrained(tmp_path)

    bad = dict(keys)
    bad["model.layers.0.self_attn.k_proj.weight"] = torch.zeros(7, 64)
    save_file(bad, str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.k_proj\.weight.*\(7, 64\).*\(32, 64\)"):
        KExaoneForCausalLM.from_pretrained(tmp_path)


def test_index_pointing_at_a_missing_shard(model, tmp_path):
    model.save_pretrained(tmp_path, max_shard_bytes=150_000)
    victim = sorted(tmp_path.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        KExaoneForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text("{}")
    with pytest.raises(ValueError, match="weight_map"):
        KExaoneForCausalLM.from_pretrained(tmp_path)


def test_save_argument_errors(model, tmp_path):
    with pytest.raises(ValueError, match="max_shard_bytes"):
        model.save_pretrained(tmp_path, max_shard_bytes=0)
    with pytest.raises(ValueError, match="dtype"):
        model.save_pretrained(tmp_path, dtype=torch.int32)


def test_load_is_lazy_per_tensor(saved, monkeypatch):
    """Loading reads tensors one by one from safe_open (never a whole-file load into a dict)."""
    import safetensors.torch as st

    def forbidden(*a, **k):
        raise AssertionError("whole-file load used")

    monkeypatch.setattr(st, "load_file", forbidden)
    monkeypatch.setattr(torch, "load", forbidden)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        KExaoneForCausalLM.from_pretrained(saved)
    assert hf_mod.read_weight_map(saved)["lm_head.weight"].name == "model.safetensors"
