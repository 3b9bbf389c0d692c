"""`kexaone sft` end to end on a tiny model: the exported checkpoint loads in transformers with equal logits and its
MTP head was trained; a LoRA run's adapter loads with peft onto transformers' model with the logits of kexaone +
adapter and of the --merge checkpoint (base, MTP head and routers untouched); a run killed mid-way resumes bit for
bit; bad data and bad flags fail with clear messages; the config and CLI."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kexaone import KExaoneConfig, KExaoneForCausalLM
from kexaone.tokenizer import KExaoneTokenizer
from kexaone.tokenizer.specials import SPECIAL_TOKENS
from kexaone.train.sft import LORA_GROUPS, SFTConfig, add_arguments, config_from_args, run_sft

TOL = 1e-4
BASE_ARGS = ["--max-seq-len", "128", "--batch-size", "4", "--threads", "1", "--no-progress", "--no-tensorboard",
             "--peak-flops", "1e12", "--acceptance-prompts", "2", "--eval-every", "0", "--lr", "3e-3"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A tiny base checkpoint with a byte tokenizer, and a small JSONL of conversations (reasoning on and off, a
    tool call, prompt/completion)."""
    root = tmp_path_factory.mktemp("sft")
    tok = KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                               eos_token_id=tok.eos_id, bos_token_id=None)
    KExaoneForCausalLM(cfg).save_pretrained(root / "base")
    tok.save(root / "base")
    rows = []
    for i in range(24):
        rows.append({"id": f"r{i}", "enable_thinking": i % 2 == 0, "messages": [
            {"role": "user", "content": f"add {i} {i + 1}"},
            {"role": "assistant", "content": f"{2 * i + 1}", "reasoning_content": f"{i}+{i + 1}={2 * i + 1}"}]})
    rows.append({"tools": [{"name": "now", "parameters": {}}], "messages": [
        {"role": "user", "content": "time?"}, {"role": "assistant", "content": "", "tool_calls": [
            {"name": "now", "arguments": {}}]}, {"role": "tool", "content": "9:00"},
        {"role": "assistant", "content": "9:00"}]})
    rows.append({"prompt": "hi", "completion": "hello"})
    (root / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def parse(*argv):
    p = argparse.ArgumentParser()
    add_arguments(p)
    return config_from_args(p.parse_args([str(a) for a in argv]))


def sft(ws, out, *extra, cache=None):
    cfg = parse("--init-from", ws / "base", "--data", ws / "train.jsonl", "--out", out, *BASE_ARGS, *extra)
    old_env, old_threads = os.environ.get("KEXAONE_CACHE"), torch.get_num_threads()
    os.environ["KEXAONE_CACHE"] = str(cache or ws / "cache")
    try:
        return run_sft(cfg)
    finally:
        torch.set_num_threads(old_threads)
        if old_env is None:
            del os.environ["KEXAONE_CACHE"]
        else:
            os.environ["KEXAONE_CACHE"] = old_env


def ids(vocab, seed=1):
    return torch.randint(0, vocab, (2, 20), generator=torch.Generator().manual_seed(seed))


def test_full_sft_checkpoint_loads_in_transformers_with_equal_logits(workspace, tmp_path):
    transformers = pytest.importorskip("transformers")
    res = sft(workspace, tmp_path / "run", "--max-steps", "3")
    assert res.model_dir == tmp_path / "run" / "model" and res.adapter_dir is None
    rec = json.loads((tmp_path / "run" / "result.json").read_text())
    assert rec["objective"] == {"name": "sft", "weights": {"ce": 1.0, "mtp": 0.05, "aux": 1e-4}}
    assert rec["sources"][0]["conversations"] == 26 and rec["sources"][0]["skipped_too_long"] == 0
    acc = rec["mtp_acceptance"]
    assert acc["prompts"] == 2 and 0.0 <= acc["before"] <= 1.0 and 0.0 <= acc["after"] <= 1.0

    ours = KExaoneForCausalLM.from_pretrained(res.model_dir).eval()
    hf = transformers.AutoModelForCausalLM.from_pretrained(res.model_dir).eval()
    x = ids(ours.config.vocab_size)
    with torch.no_grad():
        assert (ours(x).logits - hf(x).logits).abs().max().item() < TOL
    # The MTP head trained (weight 0.05 on the assistant targets); main weights moved too.
    base = load_file(str(workspace / "base" / "model.safetensors"))
    new = load_file(str(res.model_dir / "model.safetensors"))
    changed = {k for k in base if not torch.equal(base[k], new[k])}
    assert any(k.startswith("mtp.") for k in changed) and any(k.startswith("model.layers.") for k in changed)
    vocab = KExaoneTokenizer.from_dir(workspace / "base").vocab_size
    assert KExaoneTokenizer.from_dir(res.model_dir).vocab_size == vocab


def test_lora_adapter_loads_in_peft_on_transformers_and_merge_equals_it(workspace, tmp_path):
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    from kexaone.model.lora import load_adapter, load_adapter_on_transformers

    out = tmp_path / "lora"
    res = sft(workspace, out, "--max-steps", "3", "--lora-rank", "4", "--lora-targets", "attention", "dense",
              "shared", "--merge", "--lr", "1e-2")
    assert res.adapter_dir == out / "adapter" and res.model_dir == out / "model"
    rec = json.loads((out / "result.json").read_text())
    assert rec["lora"]["rank"] == 4 and rec["objective"]["weights"] == {"ce": 1.0, "aux": 0.0}  # no MTP term
    cfg = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert cfg["base_model_name_or_path"] == str((workspace / "base").resolve())
    adapter = load_file(str(out / "adapter" / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().max() > 0 for k, v in adapter.items())  # it trained

    x = ids(KExaoneTokenizer.from_dir(workspace / "base").vocab_size)
    kx = load_adapter(KExaoneForCausalLM.from_pretrained(workspace / "base"), out / "adapter").eval()
    hf = load_adapter_on_transformers(
        transformers.AutoModelForCausalLM.from_pretrained(workspace / "base"), out / "adapter").eval()
    merged = KExaoneForCausalLM.from_pretrained(out / "model").eval()
    hf_merged = transformers.AutoModelForCausalLM.from_pretrained(out / "model").eval()
    with torch.no_grad():
        a, b, c, d = kx(x).logits, hf(x).logits, merged(x).logits, hf_merged(x).logits
    assert (a - b).abs().max().item() < TOL  # peft on transformers == kexaone + adapter
    assert (a - c).abs().max().item() < TOL  # --merge == the adapter
    assert (c - d).abs().max().item() < TOL  # the merged checkpoint in transformers
    # Frozen in LoRA mode: the MTP head, the routers and their biases are exactly the base's.
    base = load_file(str(workspace / "base" / "model.safetensors"))
    new = load_file(str(out / "model" / "model.safetensors"))
    frozen = [k for k in base if k.startswith("mtp.") or ".mlp.gate." in k]
    assert frozen and all(torch.equal(base[k], new[k]) for k in frozen)


def test_lora_without_merge_writes_only_the_adapter(workspace, tmp_path, capsys):
    from kexaone.train.sft import _summarise

    res = sft(workspace, tmp_path / "l", "--max-steps", "1", "--lora-rank", "2", "--acceptance-prompts", "0")
    assert res.model_dir is None and (tmp_path / "l" / "adapter" / "adapter_config.json").is_file()
    assert not (tmp_path / "l" / "model").exists()
    # The command's closing lines say where the adapter is and how to get a full model.
    capsys.readouterr()
    _summarise(parse("--init-from", workspace / "base", "--lora-rank", "2"), res)
    out = capsys.readouterr().out
    assert f"adapter: {tmp_path / 'l' / 'adapter'}" in out and "without --merge" in out and "--merge" in out
    assert str(workspace / "base") in out


def env(cache: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(OMP_NUM_THREADS="1", KEXAONE_CACHE=str(cache), PYTHONWARNINGS="ignore")
    return e


def test_kill_mid_sft_then_resume_is_bit_identical(workspace, tmp_path):
    steps = ["--max-steps", "8", "--save-every", "2", "--acceptance-prompts", "0"]
    sft(workspace, tmp_path / "ref", *steps)
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "kexaone", "sft", "--init-from", str(workspace / "base"), "--data",
            str(workspace / "train.jsonl"), "--out", str(out), *BASE_ARGS, *steps]
    proc = subprocess.Popen(argv, env=env(workspace / "cache"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    from kexaone.train.checkpoint import CheckpointManager

    mgr = CheckpointManager(out / "checkpoints")
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (out / "checkpoints").is_dir() and (mgr.latest_step() or 0) >= 4:
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # no chance to save: resume from the last periodic checkpoint
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    stopped = mgr.latest_step()
    assert stopped is not None and 4 <= stopped < 8, stopped
    res = sft(workspace, out, *steps, "--resume")
    assert res.stage.steps == 8
    def final(d):
        return load_file(str(d / "checkpoints" / "step_00000008" / "model.safetensors"))

    def losses(d):
        recs = map(json.loads, (d / "metrics.jsonl").read_text().splitlines())
        return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}

    a, b = final(tmp_path / "ref"), final(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert losses(out) == losses(tmp_path / "ref")  # the metrics log reads as one run


def cli(*argv, cache):
    p = subprocess.run([sys.executable, "-m", "kexaone", "sft", *map(str, argv)], env=env(cache),
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stdout + p.stderr


@pytest.mark.parametrize("rows,needle", [
    ([{"text": "plain"}], "needs `messages`"),
    ([{"messages": [{"role": "user", "content": "hi"}]}], "no assistant turn"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x" * 400}]}],
     "none of its 1 conversation(s) fits in --max-seq-len 128"),
])
def test_bad_data_fails_with_a_clear_message(workspace, tmp_path, rows, needle):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out = cli("--init-from", workspace / "base", "--data", bad, "--out", tmp_path / "o", *BASE_ARGS,
                  cache=workspace / "cache")
    assert rc == 2, out[-2000:]
    assert needle in out and "Traceback" not in out
    if "assistant" in needle:
        assert "bad.jsonl:1" in out


def test_too_long_conversations_are_reported_by_the_command(workspace, tmp_path):
    data = tmp_path / "mix.jsonl"
    rows = [{"id": "long-1", "messages": [{"role": "user", "content": "q"},
                                          {"role": "assistant", "content": "x" * 400}]},
            {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "short"}]}]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, out = cli("--init-from", workspace / "base", "--data", data, "--out", tmp_path / "o", *BASE_ARGS,
                  "--max-steps", "1", "--acceptance-prompts", "0", cache=workspace / "cache")
    assert rc == 0, out[-2000:]
    assert "skipped 1 conversation(s)" in out and "long-1" in out


def test_config_and_flags():
    from kexaone.model.lora import TARGET_GROUPS

    assert set(LORA_GROUPS) == set(TARGET_GROUPS) | {"experts"}
    cfg = parse("--max-seq-len", "300", "--lora-rank", "8", "--lora-targets", "attention", "experts",
                "--thinking", "off", "--epochs", "2")
    assert (cfg.seq_len, cfg.lora_rank, cfg.lora_targets, cfg.thinking, cfg.epochs) == \
        (300, 8, ["attention", "experts"], "off", 2.0)
    assert SFTConfig().seq_len == 512 and SFTConfig().out == "runs/sft" and SFTConfig().packing == "document"
    with pytest.raises(ValueError, match="merge.*needs --lora-rank"):
        SFTConfig(merge=True)
    with pytest.raises(ValueError, match="thinking"):
        SFTConfig(thinking="maybe")
    with pytest.raises(ValueError, match="lora_targets"):
        SFTConfig(lora_rank=4, lora_targets=["experts"])
    with pytest.raises(ValueError, match="epochs"):
        SFTConfig(epochs=0)


def test_epochs_set_the_number_of_steps():
    from kexaone.train.sft import resolve_steps

    cfg = SFTConfig(batch_size=4, epochs=2.5)
    assert resolve_steps(cfg, rows_per_epoch=10, world_size=1) == 7  # ceil(2.5 * 10 / 4)
    assert resolve_steps(SFTConfig(batch_size=4), 10, 1) == 3  # one epoch by default
    assert resolve_steps(SFTConfig(max_steps=5, epochs=9), 10, 1) == 5
