"""The speedrun's `extend` stage: base context -> 4x with the budget's numbers, and its outputs (the NIAH grid
before extension, the gate per round). run_extension itself is exercised end to end in test_extend.py; here it is
replaced by a recorder so the stage's wiring is checked in milliseconds."""

from pathlib import Path

from kexaone.pipeline import extend_stage
from kexaone.pipeline.budgets import BUDGETS
from kexaone.pipeline.stages import StageContext
from kexaone.train import extend as ext


def _ctx(tmp_path: Path, budget: str) -> StageContext:
    from dataclasses import asdict

    (tmp_path / "extend").mkdir(parents=True)
    return StageContext(out_dir=tmp_path, stage_dir=tmp_path / "extend",
                        params={"budget": asdict(BUDGETS[budget]), "seed": 3, "data": []},
                        outputs={"pretrain": {"model_dir": "pretrain/model"}}, log=lambda s: None)


def test_stage_extend_wires_4x_and_reports_rounds(tmp_path, monkeypatch):
    seen = {}

    def fake_run(cfg):
        seen["cfg"] = cfg
        run = Path(cfg.out)
        run.mkdir(parents=True)
        g = [ext.gate_decision(n, b, 1.0).to_dict() for n, b in ((0.2, 1.01), (0.95, 1.02))]
        return {"baseline": {"niah": 0.4, "bpb": 1.0, "niah_lengths": [256], "heatmap": "baseline/niah/x.png"},
                "stages": [{"length": 1024, "green": True, "niah_lengths": [512, 1024],
                            "rounds": [{"round": i + 1, "gate": gi, "steps": 30, "train_loss": 2.0}
                                       for i, gi in enumerate(g)]}],
                "model": "model"}

    monkeypatch.setattr(ext, "run_extension", fake_run)
    ctx = _ctx(tmp_path, "default")
    out = extend_stage.stage_extend(ctx)
    cfg = seen["cfg"]
    b = BUDGETS["default"]
    assert cfg.base_length == b.seq_len and cfg.stages == (4 * b.seq_len,)
    assert cfg.init_from == str(tmp_path / "pretrain" / "model") and cfg.seed == 3
    assert cfg.synthetic_size == b.corpus_size and cfg.niah_threshold == 0.9 and cfg.bpb_tolerance == 0.03
    assert out["baseline_niah"] == 0.4 and out["target_length"] == 4 * b.seq_len and out["green"]
    assert [r["green"] for r in out["stages"][0]["rounds"]] == [False, True]
    assert out["model_dir"] == "extend/run/model" and out["report"] == "extend/run/extend_report.md"


def test_tiny_budget_is_a_short_run(tmp_path):
    cfg = extend_stage.extend_config(_ctx(tmp_path, "tiny"))
    assert cfg.steps_per_round == 4 and cfg.rounds_per_stage == 2
    assert cfg.stages == (4 * BUDGETS["tiny"].seq_len,)
