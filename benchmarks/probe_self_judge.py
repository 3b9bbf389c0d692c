"""Can the speedrun's own model be the rubric judge of its preference stage? Two ways of asking it, measured.

The preference stage (`kexaone pref`) combines rule rewards with a rubric judge over any OpenAI-compatible
endpoint; the default speedrun has no judge model (offline, 2 CPU cores). This probe tries the one judge a run has,
its own model, on the responses the run's preference stage sampled and scored (`pref/run/samples.jsonl`,
`pref/run/rewards.jsonl`):

1. Generated verdicts, the production path: `kexaone serve` on the model in a subprocess, and
   `kexaone.rl.judge.RubricJudgeReward` asks it for the rubric's JSON verdict on each response. Measured: the share
   of replies that score every dimension (parse rate).
2. Probability-weighted scores (G-Eval style), which need no well-formed reply: for each response and dimension,
   the judge prompt is followed by the start of the verdict `{"<dimension>": ` and the score is the expected digit
   under the model's next-token distribution restricted to the digits 1..9. Measured: the Spearman correlation of
   each dimension with the run's rule rewards over the same responses (the combined rule reward; for the safety
   dimension also the refusal rule where it applies), and how much the scores spread.

A judge worth its weight must at least parse, and agree with the rules where they overlap (safety vs refusal,
language vs language match). Writes benchmarks/results/probe_self_judge.md.

    nice -n 10 python benchmarks/probe_self_judge.py --run runs/speedrun [--models rl sft] [--responses 48]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_decode import machine  # noqa: E402
from bench_server import free_port, wait_until_serving  # noqa: E402

from kexaone.utils.io import atomic_write_text  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results" / "probe_self_judge.md"


def spearman(xs: list[float], ys: list[float]) -> float:
    """Spearman's rank correlation (average ranks for ties); nan when either side is constant."""
    def ranks(v):
        order = sorted(range(len(v)), key=v.__getitem__)
        r = [0.0] * len(v)
        i = 0
        while i < len(v):
            j = i
            while j + 1 < len(v) and v[order[j + 1]] == v[order[i]]:
                j += 1
            for k in range(i, j + 1):
                r[order[k]] = (i + j) / 2
            i = j + 1
        return r

    rx, ry = ranks(xs), ranks(ys)
    mx, my = statistics.fmean(rx), statistics.fmean(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / (sxx * syy) ** 0.5 if sxx > 0 and syy > 0 else float("nan")


def load_responses(run: Path, n: int) -> list[dict]:
    """The pref stage's scored responses: prompt text, response text, rule rewards; the first n, prompts in turn."""
    from kexaone.rl.completions import final_text, prompt_text
    from kexaone.rl.prompts import load_prompts

    pref = run / "pref" / "run"
    stage = json.loads((run / "stages.json").read_text(encoding="utf-8"))["stages"]["pref"]["outputs"]
    rows = {str(r["id"]): r for r in load_prompts("default", "pref", stage["budget"]["n_prompts"], 0)}
    texts = {}
    for line in (pref / "samples.jsonl").read_text(encoding="utf-8").splitlines()[1:]:
        rec = json.loads(line)
        texts[rec["id"]] = [r["text"] for r in rec["responses"]]
    out = []
    for line in (pref / "rewards.jsonl").read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        row = rows[rec["id"]]
        out.append({"prompt": prompt_text(row["prompt"]), "completion": final_text(texts[rec["id"]][rec["g"]]),
                    "reward": rec["reward"], "rules": rec["rewards"], "g": rec["g"]})
    out.sort(key=lambda r: r["g"])  # stable: one response per prompt first, then the others
    return out[:n]


def generated_verdicts(model_dir: Path, items: list[dict], max_tokens: int) -> tuple[list, str | None]:
    """Per item: the rubric scores parsed from the served model's verdict, or None; and the raw reply to the first
    item (shown in the report)."""
    from kexaone.rl.judge import JudgeEndpoint, RubricJudgeReward

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "kexaone", "serve", "--model", str(model_dir), "--host",
                               "127.0.0.1", "--port", str(port), "--served-model-name", "judge", "--log-level",
                               "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_serving(url, server, timeout_s=180)
        judge = RubricJudgeReward(JudgeEndpoint(url + "/v1", "judge", max_tokens=max_tokens, workers=4))
        scores = judge.dimension_scores([i["prompt"] for i in items], [i["completion"] for i in items])
        replies = judge.judge.ask([judge.rubric.message(items[0]["prompt"], items[0]["completion"])])
        return scores, replies[0]
    finally:
        server.terminate()
        server.wait(timeout=30)


@torch.inference_mode()
def weighted_scores(model_dir: Path, items: list[dict]) -> dict[str, list[float]]:
    """Per rubric dimension: the expected digit (1..9) of the model's next token after `{"<dimension>": `."""
    from kexaone.model.transformer import KExaoneForCausalLM
    from kexaone.rl.judge import DEFAULT_RUBRIC
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.chat import render

    tok = KExaoneTokenizer.from_dir(model_dir)
    model = KExaoneForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    digits = {}
    for d in range(1, 10):
        ids = tok.encode(str(d))
        if len(ids) == 1:
            digits[ids[0]] = d
    if len(digits) < 9:
        raise ValueError(f"the tokenizer has single tokens for only {len(digits)} of the digits 1..9")
    digit_ids = torch.tensor(list(digits))
    values = torch.tensor(list(digits.values()), dtype=torch.float32)
    out: dict[str, list[float]] = {d.name: [] for d in DEFAULT_RUBRIC.dimensions}
    for item in items:
        head = render([{"role": "user", "content": DEFAULT_RUBRIC.message(item["prompt"], item["completion"])}],
                      enable_thinking=False, add_generation_prompt=True)
        for dim in DEFAULT_RUBRIC.dimensions:
            ids = tok.encode(head + '{"' + dim.name + '": ')[-model.config.max_position_embeddings + 1:]
            logits = model(torch.tensor([ids]), logits_to_keep=1).logits[0, -1].float()
            p = torch.softmax(logits[digit_ids], dim=0)
            out[dim.name].append(float((p * values).sum()))
    return out


def probe(run: Path, stage: str, items: list[dict], max_tokens: int) -> list[str]:
    """The report lines of one judge model (the `stage` model of `run`)."""
    model_dir = run / stage / "run" / "model"
    if not model_dir.is_dir():
        raise SystemExit(f"{run} has no {stage} model: run the speedrun first")
    t0 = time.perf_counter()
    parsed, example = generated_verdicts(model_dir, items, max_tokens)
    t_gen = time.perf_counter() - t0
    n_ok = sum(s is not None for s in parsed)

    t0 = time.perf_counter()
    weighted = weighted_scores(model_dir, items)
    t_w = time.perf_counter() - t0
    rule = [i["reward"] for i in items]
    rows = []
    for name, vals in weighted.items():
        matching = ""
        rule_name = {"safety": "refusal", "language": "language"}.get(name)
        pairs = [(v, i["rules"][rule_name]) for v, i in zip(vals, items)
                 if rule_name and i["rules"].get(rule_name) is not None]
        if len(pairs) >= 4:
            matching = f"{rule_name}: {spearman([a for a, _ in pairs], [b for _, b in pairs]):+.2f} (n={len(pairs)})"
        rows.append(f"| {name} | {statistics.fmean(vals):.2f} | {min(vals):.2f}-{max(vals):.2f} | "
                    f"{statistics.pstdev(vals):.2f} | {spearman(vals, rule):+.2f} | {matching or 'n/a'} |")
    return [
        f"### Judge: the `{stage}` model",
        "",
        f"1. Generated verdicts (`kexaone serve` + `RubricJudgeReward`, default rubric, temperature 0, "
        f"{max_tokens} tokens): **{n_ok} of {len(items)} replies score every dimension** ({t_gen:.0f} s). "
        f"The reply for the first response: {json.dumps(example[:300] if example else example, ensure_ascii=False)}",
        "",
        f"2. Probability-weighted scores (expected digit 1..9 after `{{\"<dimension>\": `, {t_w:.0f} s), against the "
        f"rule rewards of the same responses (Spearman; with n = {len(items)} one standard error is about "
        f"{1 / (len(items) - 1) ** 0.5:.2f}):",
        "",
        "| dimension | mean | range | spread (std) | vs combined rule reward | vs the matching rule |",
        "|---|---|---|---|---|---|",
        *rows,
        "",
    ]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", default="runs/speedrun", help="a speedrun directory whose pref stage has run")
    ap.add_argument("--models", nargs="+", default=["rl", "sft"],
                    help="the stages whose models judge (default: rl, the policy the preference stage starts "
                         "from, and sft)")
    ap.add_argument("--responses", type=int, default=48)
    ap.add_argument("--max-tokens", type=int, default=192, help="length of a generated verdict")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    run = Path(args.run)
    if not (run / "pref" / "run" / "rewards.jsonl").is_file():
        raise SystemExit(f"{run} has no finished pref stage: run the speedrun first")
    items = load_responses(run, args.responses)
    lines = [
        "## Probe: the speedrun's own model as the rubric judge (probe_self_judge.py)",
        "",
        f"Machine: {machine(args.threads)}. Run `{run}`; {len(items)} of its preference stage's sampled responses "
        "(one per prompt first), with the rule rewards that stage gave them.",
        "",
    ]
    for stage in args.models:
        lines += probe(run, stage, items, args.max_tokens)
    text = "\n".join(lines)
    print(text)
    atomic_write_text(RESULTS, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
