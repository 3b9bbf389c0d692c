"""The report of a `kexaone ablate` directory: per-variant means over seeds, standard errors, deltas against the
baseline with their noise and significance, plus two plots (loss curves overlaid; held-out bits-per-byte delta of
each variant with error bars).

Statistics (`stats`, `compare`): mean over seeds; standard error = sample standard deviation (n - 1) / sqrt(n), None
for one seed; delta = variant mean - baseline mean; its standard error sqrt(se_v^2 + se_b^2), where a one-seed
variant borrows the pooled seed variance of the runs that have several seeds (said in the table: "pooled");
significant when |delta| >= 2 standard errors (about 95% under a normal model), `**` at >= 3. A delta whose noise
cannot be estimated at all (no run has two seeds) is marked "n/a", never significant; one whose seeds never varied
(standard error 0) is marked "det." (exact for deterministic metrics such as KV-cache bytes).

Not here: running anything (kexaone.pipeline.ablate).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

METRICS: tuple[tuple[str, str, bool], ...] = (
    ("heldout_bpb", "held-out bits/byte", True),
    ("eval_loss", "held-out loss (nats/token)", True),
    ("final_loss", "final train loss", True),
    ("task:arithmetic", "arithmetic acc", False),
    ("task:crosslingual_recall", "crosslingual recall acc", False),
    ("task:retrieval", "retrieval acc", False),
    ("task:code_completion", "code completion acc", False),
    ("induction:induction_acc", "induction acc", False),
    ("induction:recall_acc", "recall (MQAR) acc", False),
    ("niah:base", "NIAH @ base", False),
    ("niah:4x", "NIAH @ 4x", False),
    ("max_vio_final", "MaxVio (last 10%)", True),
    ("tok_per_s", "train tokens/s", False),
    ("kv_cache_bytes_32k", "KV cache @32K (bytes)", True),
    ("mtp_acceptance", "MTP acceptance", False),
    ("spec_speedup", "speculative speed-up", False),
)
"""(key, label, lower is better). A key "a:b" reads summary[a][b]; niah base/4x are the smaller/larger length."""
PRIMARY = "heldout_bpb"


def metric_value(summary: dict, key: str) -> float | None:
    if ":" not in key:
        v = summary.get(key)
    else:
        a, b = key.split(":", 1)
        sub = summary.get({"task": "tasks"}.get(a, a))
        if not isinstance(sub, dict):
            return None
        if a == "niah":
            lengths = sorted(sub, key=int)
            v = sub[lengths[0] if b == "base" else lengths[-1]] if lengths else None
        else:
            v = sub.get(b)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


@dataclass
class Stat:
    n: int
    mean: float | None
    stderr: float | None
    var: float | None
    """Sample variance (n - 1); None below two values."""


def stats(values: Sequence[float]) -> Stat:
    xs = [float(x) for x in values if x is not None]
    n = len(xs)
    if n == 0:
        return Stat(0, None, None, None)
    mean = sum(xs) / n
    if n < 2:
        return Stat(n, mean, None, None)
    var = sum((x - mean) ** 2 for x in xs) / (n - 1)
    return Stat(n, mean, math.sqrt(var / n), var)


def pooled_variance(groups: Sequence[Sequence[float]]) -> float | None:
    """Pooled sample variance over groups with >= 2 values: sum of squared deviations / sum of (n - 1)."""
    ss, dof = 0.0, 0
    for g in groups:
        s = stats(g)
        if s.var is not None:
            ss += s.var * (s.n - 1)
            dof += s.n - 1
    return ss / dof if dof else None


@dataclass
class Delta:
    delta: float | None
    stderr: float | None
    z: float | None
    pooled: bool
    """The noise of a one-seed side was taken from the pooled seed variance."""

    @property
    def marker(self) -> str:
        if self.stderr == 0.0:
            # No seed varied at all: exact for a deterministic metric (KV-cache bytes), unknown noise otherwise.
            return "det." if self.delta else ""
        if self.z is None:
            return "n/a"
        a = abs(self.z)
        return "**" if a >= 3 else "*" if a >= 2 else ""

    @property
    def within_3se(self) -> bool:
        return self.z is None or abs(self.z) < 3


def compare(variant: Sequence[float], baseline: Sequence[float], pooled_var: float | None = None) -> Delta:
    v, b = stats(variant), stats(baseline)
    if v.mean is None or b.mean is None:
        return Delta(None, None, None, False)
    d = v.mean - b.mean
    parts, pooled = [], False
    for s in (v, b):
        if s.stderr is not None:
            parts.append(s.stderr ** 2)
        elif pooled_var is not None:
            parts.append(pooled_var / s.n)
            pooled = True
        else:
            return Delta(d, None, None, False)
    se = math.sqrt(sum(parts))
    return Delta(d, se, d / se if se > 0 else None, pooled)


def paired_differences(runs: list[dict], base: list[dict], key: str) -> list[float]:
    """variant - baseline on each seed both have: the same seed means the same initialisation and data order, so
    the seed's own effect cancels (a paired design)."""
    bv = {s["seed"]: metric_value(s, key) for s in base}
    out = []
    for s in runs:
        v, b = metric_value(s, key), bv.get(s["seed"])
        if v is not None and b is not None:
            out.append(v - b)
    return out


def compare_paired(diffs: Sequence[float], pooled_var: float | None = None) -> Delta:
    """Mean of seed-paired differences; its standard error from their spread, or (one pair) from the pooled
    variance of the paired differences of the variants that have several pairs."""
    s = stats(diffs)
    if s.mean is None:
        return Delta(None, None, None, False)
    if s.stderr is not None:
        return Delta(s.mean, s.stderr, s.mean / s.stderr if s.stderr > 0 else None, False)
    if pooled_var is None:
        return Delta(s.mean, None, None, False)
    se = math.sqrt(pooled_var / s.n)
    return Delta(s.mean, se, s.mean / se if se > 0 else None, True)


# ---------------------------------------------------------------------------------------------- collecting
def load_summaries(out: Path) -> dict[str, list[dict]]:
    """variant -> finished runs' summaries, in seed order."""
    found: dict[str, list[dict]] = {}
    for p in sorted((Path(out) / "runs").glob("*/seed*/summary.json")):
        s = json.loads(p.read_text(encoding="utf-8"))
        found.setdefault(s["variant"], []).append(s)
    for v in found.values():
        v.sort(key=lambda s: s["seed"])
    return found


def values(runs: list[dict], key: str) -> list[float]:
    return [x for x in (metric_value(s, key) for s in runs) if x is not None]


def seeds_wanted(out: Path, variants: Sequence[str], max_seeds: int) -> dict[str, int]:
    """Seed counts to reach: one more for each variant (and the baseline) whose primary delta is within 3
    standard errors and has fewer than max_seeds seeds."""
    from kexaone.pipeline.ablate_variants import BASELINE

    runs = load_summaries(out)
    base = values(runs.get(BASELINE, []), PRIMARY)
    pv = pooled_variance([values(r, PRIMARY) for r in runs.values()])
    want = {}
    for v in variants:
        if v == BASELINE or v not in runs:
            continue
        n = len(runs[v])
        if n < max_seeds and compare(values(runs[v], PRIMARY), base, pv).within_3se:
            want[v] = n + 1
    if want and len(runs.get(BASELINE, [])) < max_seeds:
        want[BASELINE] = len(runs[BASELINE]) + 1
    return want


# ---------------------------------------------------------------------------------------------- learning-rate sweeps
def effective_lr(variant: str, budget: dict) -> float | None:
    """The learning rate a variant's runs trained at (the budget's, unless the variant or a sweep point sets it)."""
    from types import SimpleNamespace

    from kexaone.pipeline.ablate_variants import get_variant, resolve_train_fields

    try:
        lr = resolve_train_fields(get_variant(variant), SimpleNamespace(**budget)).get("lr", budget.get("lr"))
    except ValueError:
        return None
    return float(lr) if isinstance(lr, (int, float)) else None


def lr_sweeps(runs: dict[str, list[dict]], budget: dict, pooled_paired_var: float | None) -> dict[str, Any]:
    """For each variant swept over learning rates (`NAME@lr=X` runs present): every point's held-out bits per
    byte, the best point, and the best point's seed-paired delta against the best point of the baseline's own
    sweep (the baseline alone when it was not swept): the comparison "at tuned learning rates". The best point is
    picked on the same held-out set it is scored on, which flatters both sides alike."""
    from kexaone.pipeline.ablate_variants import BASELINE, sweep_family

    families: dict[str, list[str]] = {}
    for v in runs:
        families.setdefault(sweep_family(v), []).append(v)
    swept = {f: vs for f, vs in families.items() if len(vs) > 1}
    if not swept:
        return {}

    def best(names: list[str]) -> str:
        return min(names, key=lambda v: stats(values(runs[v], PRIMARY)).mean or math.inf)

    base_best = best(families.get(BASELINE, [BASELINE]))
    out: dict[str, Any] = {}
    for f, names in swept.items():
        points = []
        for v in sorted(names, key=lambda v: effective_lr(v, budget) or 0.0):
            st = stats(values(runs[v], PRIMARY))
            points.append({"variant": v, "lr": effective_lr(v, budget), "n": st.n, "mean": st.mean,
                           "stderr": st.stderr})
        b = best(names)
        entry: dict[str, Any] = {"points": points, "best": b}
        if f != BASELINE and base_best in runs:
            d = compare_paired(paired_differences(runs[b], runs[base_best], PRIMARY), pooled_paired_var)
            entry["vs_baseline_best"] = {"baseline": base_best, "delta": d.delta, "stderr": d.stderr, "z": d.z,
                                         "marker": d.marker, "pooled": d.pooled}
        out[f] = entry
    return out


def sweep_lines(sweeps: dict[str, Any]) -> list[str]:
    if not sweeps:
        return []
    L = ["", "## Learning-rate sweeps", "",
         "Held-out bits per byte at each learning rate (mean ± standard error over seeds); `best` is the lowest. "
         "The tuned comparison is the seed-paired delta of a variant's best point against the best point of the "
         "baseline's sweep. The best points are chosen on the held-out set they are scored on, which flatters "
         "both sides alike.", "",
         "| variant | learning rate | n | held-out bits/byte | |", "|---|---|---|---|---|"]
    for f, e in sweeps.items():
        for p in e["points"]:
            se = f" ± {_fmt(p['stderr'])}" if p["stderr"] is not None else ""
            L.append(f"| {f} | {p['lr']:g} | {p['n']} | {_fmt(p['mean'])}{se} | "
                     f"{'best' if p['variant'] == e['best'] else ''} |")
    tuned = [(f, e) for f, e in sweeps.items() if "vs_baseline_best" in e]
    if tuned:
        L += ["", "| at tuned learning rates | paired Δ bits/byte vs the baseline's best |", "|---|---|"]
        for f, e in tuned:
            d = e["vs_baseline_best"]
            if d["delta"] is None:
                txt = "— (no seed in common)"
            else:
                se = f" ± {d['stderr']:.4f}" if d["stderr"] is not None else ""
                tags = " ".join(x for x in (d["marker"], "p" if d["pooled"] else "") if x)
                txt = f"{d['delta']:+.4f}{se} {tags}".rstrip()
            L.append(f"| `{e['best']}` vs `{d['baseline']}` | {txt} |")
    return L


# ---------------------------------------------------------------------------------------------- writing
def _fmt(x: float | None, key: str = "") -> str:
    if x is None:
        return "—"
    if key == "kv_cache_bytes_32k":
        return f"{x / 2 ** 20:.2f} MiB"
    if key == "tok_per_s":
        return f"{x:,.0f}"
    return f"{x:.4f}" if abs(x) < 10 else f"{x:,.1f}"


def _mean_curve(runs: list[dict], key: str = "loss") -> tuple[list[int], list[float]]:
    by_step: dict[int, list[float]] = {}
    for s in runs:
        for step, loss in s.get("curves", {}).get(key, []):
            by_step.setdefault(int(step), []).append(float(loss))
    steps = sorted(by_step)
    return steps, [sum(by_step[k]) / len(by_step[k]) for k in steps]


def plot_curves(runs: dict[str, list[dict]], path: Path, smooth: int = 10, key: str = "loss",
                ylabel: str = "train loss") -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 5))
    for v, rs in runs.items():
        steps, loss = _mean_curve(rs, key)
        if not steps:
            continue
        k = max(1, min(smooth, len(loss) // 5 or 1))
        sm = [sum(loss[max(0, i - k + 1):i + 1]) / len(loss[max(0, i - k + 1):i + 1]) for i in range(len(loss))]
        ax.plot(steps, sm, label=f"{v} (n={len(rs)})", lw=2.2 if v == "baseline" else 1.0)
    ax.set_xlabel("step")
    ax.set_ylabel(f"{ylabel} (mean over seeds, {smooth}-step moving average)")
    ax.legend(fontsize=7, ncol=2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_deltas(rows: list[tuple[str, Delta]], path: Path, label: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [(v, d) for v, d in rows if d.delta is not None]
    fig, ax = plt.subplots(figsize=(8, 0.4 * len(rows) + 1.5))
    ys = range(len(rows))
    ax.barh(list(ys), [d.delta for _, d in rows], xerr=[d.stderr or 0.0 for _, d in rows], capsize=3,
            color=["tab:red" if d.marker.startswith("*") else "tab:gray" for _, d in rows])
    ax.set_yticks(list(ys), [f"{v} {d.marker}".strip() for v, d in rows])
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel(f"delta {label} vs baseline (error bar: 1 standard error; red: |delta| >= 2 s.e.)")
    ax.invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def build_table(runs: dict[str, list[dict]]) -> dict[str, Any]:
    """{variant: {metric: {n, mean, stderr, delta, delta_se, z, marker, pooled}}} against the baseline."""
    from kexaone.pipeline.ablate_variants import BASELINE

    base = runs.get(BASELINE, [])
    table: dict[str, Any] = {}
    for key, _, _ in METRICS:
        pv = pooled_variance([values(r, key) for r in runs.values()])
        for v, rs in runs.items():
            s = stats(values(rs, key))
            d = compare(values(rs, key), values(base, key), pv) if v != BASELINE else Delta(None, None, None, False)
            table.setdefault(v, {})[key] = {"n": s.n, "mean": s.mean, "stderr": s.stderr, "delta": d.delta,
                                            "delta_se": d.stderr, "z": d.z, "marker": d.marker if d.delta is not None
                                            else "", "pooled": d.pooled}
    return table


def write_report(out: Path, not_run: Sequence[str] | None = None) -> Path:
    """DIR/ablations.md, ablations.json, loss_curves.png, maxvio_curves.png, delta_bpb.png; returns the markdown
    path."""
    from kexaone.pipeline.ablate_variants import BASELINE, VARIANTS, sweep_family
    from kexaone.utils.io import atomic_write_text

    out = Path(out)
    runs = load_summaries(out)
    budget = {}
    if (out / "ablate.json").is_file():
        budget = json.loads((out / "ablate.json").read_text(encoding="utf-8")).get("budget", {})
    # The baseline first, then each named variant's runs in the names' order, a swept variant's points by
    # learning rate, then anything else.
    by_lr = sorted(runs, key=lambda v: effective_lr(v, budget) or 0.0)
    order = [BASELINE] if BASELINE in runs else []
    order += [v for name in VARIANTS for v in by_lr if sweep_family(v) == name and v not in order]
    order += sorted(v for v in runs if v not in order)
    runs = {v: runs[v] for v in order}
    table = build_table(runs)
    missing = list(not_run) if not_run is not None else [v for v in VARIANTS if v not in runs]
    L: list[str] = [f"# Ablations ({budget.get('name', '?')} budget)", ""]
    if budget:
        L += [f"Budget: {budget.get('description', '')}. Preset `{budget.get('preset')}` "
              f"(overrides {budget.get('config_overrides') or 'none'}), {budget.get('train_steps')} steps of "
              f"{budget.get('batch_size')} x {budget.get('seq_len')} tokens, lr {budget.get('lr')}, precision "
              f"{budget.get('precision')}, vocabulary {budget.get('tokenizer_vocab_size')}.", ""]
    L += ["Each cell: mean over seeds ± standard error (n seeds); Δ = variant − baseline ± its standard error. "
          "`*` |Δ| ≥ 2 s.e., `**` ≥ 3 s.e.; `n/a`: noise unknown (one seed and no pooled estimate); "
          "`det.`: no seed "
          "varied at all (exact for deterministic metrics such as the KV cache); `p`: the noise "
          "of a one-seed side is the pooled seed variance. Bits per byte compare tokenizers fairly (SuperBPE vs "
          "BPE); per-token losses do not.", ""]
    # Main table: the primary metric and the headline ones.
    head = ["heldout_bpb", "eval_loss", "task:retrieval", "induction:induction_acc", "max_vio_final", "tok_per_s",
            "mtp_acceptance"]
    labels = {k: lab for k, lab, _ in METRICS}
    base_runs = runs.get(BASELINE, [])
    pdiffs = {v: paired_differences(rs, base_runs, PRIMARY) for v, rs in runs.items() if v != BASELINE}
    ppv = pooled_variance(list(pdiffs.values()))
    paired = {v: compare_paired(d, ppv) for v, d in pdiffs.items()}
    L += ["The paired column compares each variant with the baseline run of the same seed (same initialisation "
          "and data order), which removes the seed's own effect: mean of the per-seed differences ± its standard "
          "error (one pair: the pooled variance of the paired differences of variants with several pairs, `p`).",
          ""]
    L += ["| variant | n | paired Δ bits/byte | " + " | ".join(labels[k] for k in head) + " |",
          "|---|---|---|" + "---|" * len(head)]
    for v, cells in table.items():
        pd = paired.get(v)
        if pd is None or pd.delta is None:
            ptxt = "—"
        else:
            tags = " ".join(x for x in (pd.marker, "p" if pd.pooled else "") if x)
            se = f" ± {pd.stderr:.4f}" if pd.stderr is not None else ""
            ptxt = f"{pd.delta:+.4f}{se} {tags} (n={len(pdiffs[v])})".replace("  ", " ")
        row = [v, str(len(runs[v])), ptxt]
        for k in head:
            c = cells[k]
            if c["mean"] is None:
                row.append("—")
                continue
            txt = _fmt(c["mean"], k) + (f" ± {_fmt(c['stderr'], k)}" if c["stderr"] is not None else "")
            if v != BASELINE and c["delta"] is not None:
                se = f" ± {_fmt(c['delta_se'], k)}" if c["delta_se"] is not None else ""
                tags = " ".join(x for x in (c["marker"], "p" if c["pooled"] else "") if x)
                txt += f"<br>Δ {c['delta']:+.4g}{se} {tags}".rstrip()
            row.append(txt.strip())
        L.append("| " + " | ".join(row) + " |")
    L += ["", "## Every metric", ""]
    L += ["| variant | " + " | ".join(lab for _, lab, _ in METRICS) + " |", "|---|" + "---|" * len(METRICS)]
    for v, cells in table.items():
        row = [v]
        for k, _, _ in METRICS:
            c = cells[k]
            if c["mean"] is None:
                row.append("—")
            elif v == BASELINE or c["delta"] is None:
                row.append(_fmt(c["mean"], k))
            else:
                row.append(f"{_fmt(c['mean'], k)} (Δ {c['delta']:+.3g} {c['marker']})".replace(" )", ")"))
        L.append("| " + " | ".join(row) + " |")
    sweeps = lr_sweeps(runs, budget, ppv)
    L += sweep_lines(sweeps)
    L += ["", "## Held-out bits per byte by (domain, language)", ""]
    groups = sorted({g for rs in runs.values() for s in rs for g in (s.get("heldout_bpb_by_group") or {})})
    if groups:
        L += ["| variant | " + " | ".join(groups) + " |", "|---|" + "---|" * len(groups)]
        for v, rs in runs.items():
            cells = []
            for g in groups:
                st = stats([s["heldout_bpb_by_group"][g] for s in rs if g in (s.get("heldout_bpb_by_group") or {})])
                cells.append(_fmt(st.mean) + (f" ± {_fmt(st.stderr)}" if st.stderr is not None else ""))
            L.append(f"| {v} | " + " | ".join(cells) + " |")
    if runs:
        plot_curves(runs, out / "loss_curves.png")
        rows = [(v, paired[v]) for v in runs if v != BASELINE]
        if rows:
            plot_deltas(rows, out / "delta_bpb.png", "held-out bits/byte (seed-paired)")
            L += ["", "![held-out bits/byte delta, seed-paired](delta_bpb.png)"]
        plot_curves(runs, out / "maxvio_curves.png", key="max_vio", ylabel="MaxVio")
        L += ["", "![loss curves](loss_curves.png)", "", "![MaxVio over training](maxvio_curves.png)"]
    L += ["", "## Runs", ""]
    for v, rs in runs.items():
        L.append(f"- `{v}`: {rs[0].get('description', '')}; seeds "
                 f"{[s['seed'] for s in rs]}; {sum(s.get('seconds') or 0 for s in rs) / 60:.1f} min in all")
    L += ["", "## Not run", ""]
    L += [f"- `{v}`: {VARIANTS[v].description}" for v in missing] or ["- (none)"]
    md = out / "ablations.md"
    atomic_write_text(md, "\n".join(L) + "\n")
    paired_json = {v: {"diffs": pdiffs[v], "delta": d.delta, "stderr": d.stderr, "z": d.z, "marker": d.marker,
                       "pooled": d.pooled} for v, d in paired.items()}
    atomic_write_text(out / "ablations.json", json.dumps({"budget": budget, "table": table, "paired": paired_json,
                                                          "lr_sweeps": sweeps, "not_run": missing},
                                                         indent=1) + "\n")
    return md
