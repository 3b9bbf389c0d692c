"""The ablation report's statistics on hand-made numbers (mean, standard error, delta, its noise, significance,
pooled noise for one-seed variants, which variants get more seeds) and the report files."""

import json
import math
import statistics

import pytest

from kexaone.report.ablation import (PRIMARY, compare, compare_paired, metric_value, paired_differences,
                                     pooled_variance, seeds_wanted, stats, write_report)


def test_stats_hand_numbers():
    s = stats([1.0, 2.0, 4.0])
    assert s.n == 3 and s.mean == pytest.approx(7 / 3)
    # independent: statistics.stdev uses n - 1
    assert s.stderr == pytest.approx(statistics.stdev([1, 2, 4]) / math.sqrt(3))
    assert s.var == pytest.approx(statistics.variance([1, 2, 4]))
    one = stats([5.0])
    assert (one.n, one.mean, one.stderr, one.var) == (1, 5.0, None, None)
    assert stats([]).mean is None


def test_compare_delta_stderr_and_markers():
    base, var = [1.00, 1.02], [1.10, 1.12]
    d = compare(var, base)
    se = math.sqrt(2 * (statistics.stdev(base) / math.sqrt(2)) ** 2)
    assert d.delta == pytest.approx(0.10) and d.stderr == pytest.approx(se)
    assert d.z == pytest.approx(0.10 / se) and d.marker == "**" and not d.within_3se
    small = compare([1.004, 1.024], base)  # delta 0.004, se 0.01414: z ~ 0.28
    assert small.marker == "" and small.within_3se
    mid = compare([1.026, 1.046], base)  # delta 0.026, z ~ 1.84 -> not significant at 2
    assert mid.marker == ""
    mid2 = compare([1.031, 1.051], base)  # delta 0.031, z ~ 2.19
    assert mid2.marker == "*"


def test_one_seed_uses_pooled_variance_or_is_unknown():
    base = [1.0, 1.02]
    assert compare([1.5], base).marker == "n/a"  # no pooled estimate given
    pv = pooled_variance([base, [2.0, 2.04, 2.02]])
    # pooled: (0.0002 * 1 + 0.0004 * 2) / 3
    assert pv == pytest.approx((0.0002 + 0.0004 * 2) / 3)
    d = compare([1.5], base, pv)
    assert d.pooled and d.stderr == pytest.approx(math.sqrt(pv / 1 + statistics.variance(base) / 2))
    assert pooled_variance([[1.0], [2.0]]) is None


def test_zero_seed_variance_is_not_called_significant():
    d = compare([2.0, 2.0], [1.0, 1.0])  # e.g. KV-cache bytes: deterministic
    assert d.delta == 1.0 and d.stderr == 0.0 and d.z is None and d.marker == "det." and d.within_3se
    assert compare([1.0, 1.0], [1.0, 1.0]).marker == ""


def test_metric_value_paths():
    s = {"heldout_bpb": 1.5, "tasks": {"retrieval": 0.25}, "niah": {"1024": 0.5, "256": 1.0},
         "induction": {"induction_acc": 0.75}, "tok_per_s": float("nan"), "mtp_acceptance": None}
    assert metric_value(s, "heldout_bpb") == 1.5
    assert metric_value(s, "task:retrieval") == 0.25
    assert metric_value(s, "niah:base") == 1.0 and metric_value(s, "niah:4x") == 0.5
    assert metric_value(s, "induction:induction_acc") == 0.75
    assert metric_value(s, "tok_per_s") is None and metric_value(s, "mtp_acceptance") is None
    assert metric_value({"induction": None}, "induction:recall_acc") is None


def _fake(out, variant, seed, bpb, loss_curve=(5.0, 4.0)):
    d = out / "runs" / variant / f"seed{seed}"
    d.mkdir(parents=True, exist_ok=True)
    s = {"variant": variant, "seed": seed, "heldout_bpb": bpb, "heldout_bpb_by_group": {"code/py": bpb + 0.1},
         "curves": {"loss": [[1, loss_curve[0]], [2, loss_curve[1]]]}, "tasks": {"retrieval": 0.5},
         "niah": {"256": 0.0, "1024": 0.0}, "seconds": 60.0}
    (d / "summary.json").write_text(json.dumps(s))


def test_seeds_wanted_adds_seeds_only_within_3_se(tmp_path):
    for s, v in enumerate([1.00, 1.02]):
        _fake(tmp_path, "baseline", s, v)
    _fake(tmp_path, "no-mtp", 0, 1.50)  # far outside the noise (pooled se ~0.017)
    _fake(tmp_path, "bpe", 0, 1.02)  # within it
    want = seeds_wanted(tmp_path, ["baseline", "no-mtp", "bpe"], max_seeds=3)
    assert want == {"bpe": 2, "baseline": 3}
    assert seeds_wanted(tmp_path, ["baseline", "no-mtp", "bpe"], max_seeds=1) == {}


def test_write_report_table_and_plots(tmp_path):
    for s, v in enumerate([1.00, 1.02]):
        _fake(tmp_path, "baseline", s, v)
    for s, v in enumerate([1.10, 1.12]):
        _fake(tmp_path, "no-mtp", s, v)
    md = write_report(tmp_path)
    text = md.read_text()
    assert "| baseline | 2 | — | 1.0100 ± 0.0100 |" in text
    assert "Δ +0.1 ± 0.0141 **" in text
    # paired: differences 0.10 and 0.10 on seeds 0 and 1 -> stderr 0 ("det.")
    assert "| no-mtp | 2 | +0.1000 ± 0.0000 det. (n=2) |" in text
    assert (tmp_path / "loss_curves.png").stat().st_size > 0 and (tmp_path / "delta_bpb.png").stat().st_size > 0
    assert "`window-512`" in text.split("## Not run")[1]  # variants without runs are listed
    table = json.loads((tmp_path / "ablations.json").read_text())["table"]
    assert table["no-mtp"][PRIMARY]["delta"] == pytest.approx(0.1)
    assert table["no-mtp"][PRIMARY]["marker"] == "**"


def test_paired_differences_and_their_noise():
    base = [{"seed": 0, "heldout_bpb": 1.8}, {"seed": 1, "heldout_bpb": 1.7}, {"seed": 2, "heldout_bpb": 1.75}]
    var = [{"seed": 0, "heldout_bpb": 1.85}, {"seed": 1, "heldout_bpb": 1.77}]
    diffs = paired_differences(var, base, PRIMARY)
    assert diffs == pytest.approx([0.05, 0.07])
    d = compare_paired(diffs)
    assert d.delta == pytest.approx(0.06) and d.stderr == pytest.approx(statistics.stdev([0.05, 0.07]) / math.sqrt(2))
    assert d.marker == "**"  # the seed effect (0.1 between seeds) cancels; unpaired it is not significant
    assert compare([1.85, 1.77], [1.8, 1.7]).marker == ""
    one = compare_paired([0.05], pooled_var=0.0004)
    assert one.pooled and one.stderr == pytest.approx(0.02) and one.marker == "*"
    assert compare_paired([0.05]).marker == "n/a"


def test_learning_rate_sweeps_pick_the_best_point_and_compare_tuned(tmp_path):
    (tmp_path / "ablate.json").write_text(json.dumps({"budget": {"name": "t", "lr": 3e-3, "adamw_variant_lr": 3e-3}}))
    for s, v in enumerate([1.00, 1.02]):
        _fake(tmp_path, "baseline", s, v)
    for s, v in enumerate([0.98, 1.01]):  # Muon's best point: 0.995
        _fake(tmp_path, "baseline@lr=0.01", s, v)
    for name, vals in (("adamw", [1.50, 1.54]), ("adamw@lr=0.001", [1.20, 1.21]), ("adamw@lr=0.03", [2.0, 2.1])):
        for s, v in enumerate(vals):
            _fake(tmp_path, name, s, v)
    text = write_report(tmp_path).read_text()
    sweeps = json.loads((tmp_path / "ablations.json").read_text())["lr_sweeps"]
    assert [p["lr"] for p in sweeps["adamw"]["points"]] == [0.001, 0.003, 0.03]  # ordered by rate
    assert sweeps["adamw"]["best"] == "adamw@lr=0.001" and sweeps["baseline"]["best"] == "baseline@lr=0.01"
    tuned = sweeps["adamw"]["vs_baseline_best"]
    # paired against the baseline's best point: 1.20 - 0.98, 1.21 - 1.01 -> 0.22, 0.20
    assert tuned["baseline"] == "baseline@lr=0.01" and tuned["delta"] == pytest.approx(0.21)
    assert tuned["stderr"] == pytest.approx(statistics.stdev([0.22, 0.20]) / math.sqrt(2))
    assert "vs_baseline_best" not in sweeps["baseline"]
    assert "| adamw | 0.001 | 2 | 1.2050 ± 0.0050 | best |" in text
    assert "| `adamw@lr=0.001` vs `baseline@lr=0.01` | +0.2100 ± 0.0100 ** |" in text
    # the main table lists each sweep point right after its variant
    rows = [ln.split(" | ")[0][2:] for ln in text.split("## Every metric")[0].splitlines() if ln.startswith("| ")]
    assert rows[1:] == ["baseline", "baseline@lr=0.01", "adamw@lr=0.001", "adamw", "adamw@lr=0.03"]
