"""Analytic parameter counts, KV-cache bytes, FLOPs per token, and the `kexaone info` command."""

from __future__ import annotations

import json

import pytest

from kexaone.cli import main as cli_main
from kexaone.config import KExaoneConfig
from kexaone.model.info import (count_parameters, flops_per_token, kv_cache_bytes, kv_cache_bytes_per_token,
                                mean_keys_per_query, sliding_kv_cache_bytes)

BIG = "k-exaone-236b-a23b"


def test_released_model_numbers():
    c = KExaoneConfig.preset(BIG)
    n = count_parameters(c)
    assert 236e9 <= n["total"] <= 237.2e9  # SPEC: 236B, about 237.1B counted from tensors
    assert 22.5e9 <= n["active"] <= 24e9  # "A23B"
    assert 0.52e9 <= n["mtp"] <= 0.54e9
    # SPEC's component arithmetic
    assert n["routed_experts"] == 47 * 128 * 3 * 2048 * 6144
    assert n["attention"] == 48 * (6144 * (8192 + 1024 + 1024 + 8192) + 2 * 128)
    assert n["shared_experts"] == 47 * 3 * 2048 * 6144
    assert n["dense_mlp"] == 3 * 18432 * 6144
    assert n["embedding"] == 2 * 153600 * 6144
    assert n["active"] == n["main"] - 47 * 120 * 3 * 2048 * 6144
    assert n["total"] == n["main"] + n["mtp"]
    assert kv_cache_bytes_per_token(c) == 48 * 1024  # 12 global layers x 2 x 8 heads x 128 x 2 bytes
    assert kv_cache_bytes_per_token(c, include_mtp=True) == 52 * 1024
    assert kv_cache_bytes_per_token(c, bytes_per_value=1) == 24 * 1024


def test_component_sum_and_tied_embeddings():
    c = KExaoneConfig.preset("small")
    n = count_parameters(c)
    parts = ("embedding", "attention", "routed_experts", "shared_experts", "dense_mlp", "router", "norms")
    assert n["main"] == sum(n[p] for p in parts)
    tied = count_parameters(c.replace(tie_word_embeddings=True))
    assert n["total"] - tied["total"] == c.vocab_size * c.hidden_size
    no_mtp = count_parameters(c.replace(num_nextn_predict_layers=0))
    assert no_mtp["mtp"] == 0 and no_mtp["total"] == n["main"]


@pytest.mark.parametrize("name", KExaoneConfig.preset_names())
def test_analytic_total_equals_built_model(name):
    try:
        from kexaone.model.transformer import KExaoneForCausalLM
    except ModuleNotFoundError as e:  # the model module is another component; skip only if it is absent
        pytest.skip(f"kexaone.model.transformer not available: {e}")
    c = KExaoneConfig.preset(name)
    model = KExaoneForCausalLM.from_config(c, device="meta")
    counts = count_parameters(c)
    assert model.num_parameters() == counts["total"]
    assert model.num_parameters(include_mtp=False) == counts["main"]
    buffers = sum(b.numel() for n_, b in model.named_buffers() if n_.endswith("e_score_correction_bias"))
    assert buffers == counts["router_bias_buffers"]


def test_mean_keys_per_query_brute_force():
    for seq_len in (1, 5, 16, 100):
        for window in (None, 1, 4, 16, 200):
            brute = sum(min(p + 1, window) if window else p + 1 for p in range(seq_len)) / seq_len
            assert mean_keys_per_query(seq_len, window) == pytest.approx(brute)
    with pytest.raises(ValueError, match="seq_len"):
        mean_keys_per_query(0, None)


def test_flops_per_token_by_hand():
    c = KExaoneConfig.preset("tiny")  # H 64, 4 layers LLLG, window 16, 4 heads x 16, vocab 2048
    n = count_parameters(c)
    matmul = n["active"] - n["norms"] - c.vocab_size * c.hidden_size
    seq = 64
    attn = 4 * 4 * 16 * (3 * mean_keys_per_query(seq, 16) + mean_keys_per_query(seq, None))
    assert flops_per_token(c, seq) == pytest.approx(2 * matmul + attn)
    # once the sequence is much longer than the window, a sliding layer's cost per token stops growing
    d_sliding = mean_keys_per_query(100_000, 16) - mean_keys_per_query(50_000, 16)
    d_global = mean_keys_per_query(100_000, None) - mean_keys_per_query(50_000, None)
    assert 0 < d_sliding < 1e-2 and d_global == pytest.approx(25_000)
    assert flops_per_token(c, seq, include_mtp=True) > flops_per_token(c, seq)


def test_kv_cache_bytes_whole_cache():
    c = KExaoneConfig.preset(BIG)
    per_layer = 2 * 8 * 128 * 2
    assert kv_cache_bytes(c, 32768) == 32768 * 12 * per_layer + 36 * 128 * per_layer
    assert kv_cache_bytes(c, 10) == 10 * 48 * per_layer
    assert kv_cache_bytes(c, 1000, extra_slots=8) == 1000 * 12 * per_layer + 36 * 136 * per_layer
    assert sliding_kv_cache_bytes(c) == 36 * 128 * per_layer
    assert sliding_kv_cache_bytes(c.replace(sliding_window=None)) == 0


def test_cli_json(capsys):
    assert cli_main(["info", "--preset", BIG, "--json", "--seq-len", "4096"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("total_params", "active_params", "mtp_params", "kv_cache_bytes_per_token", "flops_per_token"):
        assert key in out
    assert out["kv_cache_bytes_per_token"] == 49152 and out["seq_len"] == 4096
    assert out["total_params"] == count_parameters(KExaoneConfig.preset(BIG))["total"]
    assert out["flops_per_token"] == pytest.approx(flops_per_token(KExaoneConfig.preset(BIG), 4096))


def test_cli_table_and_config_dir(tmp_path, capsys):
    KExaoneConfig.preset("small").save_json(tmp_path / "config.json")
    assert cli_main(["info", "--config", str(tmp_path)]) == 0
    table = capsys.readouterr().out
    assert "total parameters" in table and "29.75M" in table and "KV cache / token" in table
    assert cli_main(["info", "--preset", "nope"]) == 2
    assert "unknown preset" in capsys.readouterr().err
    assert cli_main(["info", "--config", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert cli_main(["info", "--preset", "tiny", "--seq-len", "0"]) == 2
