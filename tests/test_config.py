"""KExaoneConfig: presets, validation errors, and the round trip with transformers' config.json."""

import json

import pytest

from kexaone import KExaoneConfig
from kexaone.config import GLOBAL, SLIDING, layer_types_from_pattern


def test_released_preset_matches_spec():
    c = KExaoneConfig.preset("k-exaone-236b-a23b")
    assert (c.hidden_size, c.num_hidden_layers, c.sliding_window) == (6144, 48, 128)
    assert (c.num_attention_heads, c.num_key_value_heads, c.head_dim, c.vocab_size) == (64, 8, 128, 153_600)
    assert (c.intermediate_size, c.moe_intermediate_size, c.num_experts, c.num_experts_per_tok) == (18_432, 2048, 128, 8)
    assert c.num_shared_experts == 1 and c.routed_scaling_factor == 2.5 and c.num_nextn_predict_layers == 1
    assert c.layer_types.count(SLIDING) == 36 and c.layer_types.count(GLOBAL) == 12
    assert c.layer_types[:4] == [SLIDING, SLIDING, SLIDING, GLOBAL] and c.layer_types[-1] == GLOBAL
    assert c.mlp_layer_types[0] == "dense" and set(c.mlp_layer_types[1:]) == {"sparse"}
    assert [c.uses_rope(i) for i in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("name", KExaoneConfig.preset_names())
def test_presets_round_trip_through_hf_dict(name):
    c = KExaoneConfig.preset(name)
    d = json.loads(json.dumps(c.to_hf_dict()))
    assert d["model_type"] == "exaone_moe" and d["architectures"] == ["ExaoneMoeForCausalLM"]
    assert KExaoneConfig.from_hf_dict(d) == c


def test_small_preset_is_a_real_moe():
    c = KExaoneConfig.preset("small")
    assert c.num_experts >= 16 and GLOBAL in c.layer_types and SLIDING in c.layer_types
    assert c.num_nextn_predict_layers == 1


def test_string_pattern_forces_last_layer_global_int_pattern_follows_transformers():
    assert layer_types_from_pattern("LLLG", 6) == [SLIDING, SLIDING, SLIDING, GLOBAL, SLIDING, GLOBAL]
    assert layer_types_from_pattern(4, 6) == [SLIDING, SLIDING, SLIDING, GLOBAL, SLIDING, SLIDING]


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok"),
        (dict(n_group=3), "n_group"),
        (dict(topk_group=3), "topk_group"),
        (dict(sliding_window=0), "sliding_window"),
        (dict(layer_types=["sliding_attention", "bogus", "full_attention", "full_attention"]), "layer_types"),
        (dict(mlp_layer_types=["dense", "moe", "sparse", "sparse"]), "mlp_layer_types"),
        (dict(head_dim=15), "head_dim"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_nextn_predict_layers=2), "num_nextn_predict_layers"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    with pytest.raises(ValueError, match=field):
        KExaoneConfig.preset("tiny").replace(**changes)


def test_unknown_preset_lists_the_valid_ones():
    with pytest.raises(ValueError, match="tiny"):
        KExaoneConfig.preset("huge")


def test_reads_a_transformers_written_config():
    transformers = pytest.importorskip("transformers")
    hf = transformers.ExaoneMoeConfig(
        vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=5, num_attention_heads=4,
        num_key_value_heads=2, head_dim=8, moe_intermediate_size=16, num_experts=4, num_experts_per_tok=2,
        sliding_window=4, first_k_dense_replace=2, n_group=2, topk_group=1,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0},
    )
    c = KExaoneConfig.from_hf_dict(hf.to_dict())
    assert c.layer_types == list(hf.layer_types) and c.mlp_layer_types == list(hf.mlp_layer_types)
    assert c.rope_theta == 5000.0 and (c.n_group, c.topk_group) == (2, 1)
    back = transformers.ExaoneMoeConfig(**{k: v for k, v in c.to_hf_dict().items() if k != "kexaone"})
    assert back.layer_types == hf.layer_types and back.mlp_layer_types == hf.mlp_layer_types


def test_wrong_model_type_is_rejected(tmp_path):
    p = tmp_path / "config.json"
    p.write_text(json.dumps({"model_type": "llama", "num_hidden_layers": 2}))
    with pytest.raises(ValueError, match="model_type"):
        KExaoneConfig.from_json_file(p)
    with pytest.raises(FileNotFoundError):
        KExaoneConfig.from_json_file(tmp_path / "missing.json")

