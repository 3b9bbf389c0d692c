"""The speedrun's sft stage on a tiny model: it fine-tunes the pretrain stage's model on the default set, writes
base-vs-SFT sft-chat results, and returns the headline numbers; `compare` picks the right fields."""

from __future__ import annotations

import json

import torch

from kexaone import KExaoneConfig, KExaoneForCausalLM
from kexaone.pipeline import sft_stage
from kexaone.pipeline.budgets import SFTBudget, get_budget
from kexaone.pipeline.stages import StageContext
from kexaone.tokenizer import KExaoneTokenizer
from kexaone.tokenizer.specials import SPECIAL_TOKENS


def test_compare_reports_modes_and_improved_categories():
    base = {"score": 0.1, "well_formed": 0.5, "n": 4,
            "by_thinking": {"True": {"score": 0.1, "well_formed": 0.5, "n": 2},
                            "False": {"score": 0.1, "well_formed": 0.5, "n": 2}},
            "by_category": {"chat": {"score": 0.0}, "code": {"score": 0.5}}}
    sft = dict(base, score=0.3, by_category={"chat": {"score": 0.5}, "code": {"score": 0.5}})
    c = sft_stage.compare(base, sft)
    assert c["categories_improved"] == ["chat"] and set(c["base"]["by_mode"]) == {"reasoning", "non-reasoning"}


def test_stage_sft_trains_and_evaluates_base_and_sft(tmp_path, monkeypatch):
    monkeypatch.setenv("KEXAONE_CACHE", str(tmp_path / "cache"))
    tok = KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])
    torch.manual_seed(0)
    cfg = KExaoneConfig.preset("tiny").replace(vocab_size=tok.vocab_size, pad_token_id=tok.pad_id,
                                               eos_token_id=tok.eos_id, bos_token_id=None)
    model_dir = tmp_path / "run" / "pretrain" / "model"
    KExaoneForCausalLM(cfg).save_pretrained(model_dir)
    tok.save(model_dir)
    stage_dir = tmp_path / "run" / "sft"
    stage_dir.mkdir(parents=True)
    budget = get_budget("tiny").replace(sft=SFTBudget(steps=2, seq_len=512, batch_size=2, examples=24, eval_limit=4,
                                                      max_new_tokens=6))
    ctx = StageContext(out_dir=tmp_path / "run", stage_dir=stage_dir,
                       params={"budget": budget.to_dict(), "seed": 0, "data": []},
                       outputs={"pretrain": {"model_dir": "pretrain/model"}}, log=lambda m: None)
    torch_threads = torch.get_num_threads()
    try:
        out = sft_stage.stage_sft(ctx, threads=1)
    finally:
        torch.set_num_threads(torch_threads)
    assert out["init"] == "pretrain"
    assert out["steps"] == 2 and (tmp_path / "run" / out["model_dir"] / "config.json").is_file()
    ev = json.loads((tmp_path / "run" / out["eval"]).read_text())
    for side in ("base", "sft"):
        assert ev[side]["n"] == 4 and set(ev[side]["by_mode"]) == {"reasoning", "non-reasoning"}
        assert 0.0 <= ev[side]["well_formed"] <= 1.0
    assert out["score"] == {"base": ev["base"]["score"], "sft": ev["sft"]["score"]}
    assert (stage_dir / "eval_base" / "results.json").is_file() and (stage_dir / "eval_sft" / "results.json").is_file()
    assert out["mtp_acceptance"]["prompts"] == 8
