"""`kexaone safety`: print the K-AUT taxonomy, print the suite's counts, and grow the suite with a model.

  kexaone safety taxonomy [--json]
  kexaone safety suite [--counts] [--split harmful|over_refusal|all|PATH] [--json]
  kexaone safety expand --endpoint URL [--api-model NAME] [--per-area 10] --out FILE

Running the suite against a model is `kexaone eval --tasks kgc-safety`, not this command.
"""

from __future__ import annotations

import argparse
import json
import sys

HELP = "K-AUT safety taxonomy and the KGC-Safety-style suite: show them, count them, expand them with a model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="safety_command", metavar="ACTION")
    p = sub.add_parser("taxonomy", help="print the 4 domains and 226 risk areas (table, or --json with everything)")
    p.add_argument("--json", action="store_true", help="print the whole taxonomy as JSON")
    p = sub.add_parser("suite", help="print the suite's instance counts per domain x kind x language")
    p.add_argument("--split", default="all", help="harmful, over_refusal, all (default) or a path to a JSONL file")
    p.add_argument("--counts", action="store_true", help="counts table (the default output)")
    p.add_argument("--json", action="store_true", help="print the counts as JSON")
    p = sub.add_parser("expand", help="generate more instances per risk area with a model behind an OpenAI API")
    p.add_argument("--endpoint", required=True,
                   help="base URL of an OpenAI-compatible server, e.g. http://host:8000/v1")
    p.add_argument("--api-model", default=None, help="model name sent to the endpoint (default: its first model)")
    p.add_argument("--api-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--per-area", type=int, default=10, help="target instances per risk area, seed set included")
    p.add_argument("--areas", default=None, help="comma-separated risk-area ids or domain ids (default: all)")
    p.add_argument("--out", required=True, help="JSONL file to write (new instances; load_suite reads it)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--max-rounds", type=int, default=3, help="generation rounds per area before giving up")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per HTTP request")
    p.add_argument("--max-retries", type=int, default=5, help="retries on 429, 5xx and connection errors")
    p.add_argument("--seed", type=int, default=0)
    parser.set_defaults(_safety_parser=parser)


def _taxonomy(args) -> int:
    from kexaone.eval.safety.taxonomy import load_taxonomy

    tax = load_taxonomy()
    if args.json:
        print(json.dumps(tax.to_dict(), ensure_ascii=False, indent=1))
        return 0
    print(f"{tax.name} ({tax.version}): {len(tax.domains)} domains, {len(tax.areas)} risk areas")
    for d in tax.domains:
        print(f"\n{d.id}  {d.name_en} / {d.name_ko}  ({len(d.areas)} areas)")
        for a in d.areas:
            print(f"  {a.id:<7} {a.name_en} / {a.name_ko}")
    print("\ncounts: " + "  ".join(f"{k}={v}" for k, v in tax.counts().items()) + f"  total={len(tax.areas)}")
    return 0


def run(args) -> int:
    action = getattr(args, "safety_command", None)
    if action == "taxonomy":
        return _taxonomy(args)
    if action == "suite":
        return _suite(args)
    if action == "expand":
        return _expand(args)
    args._safety_parser.print_help(sys.stderr)
    return 2


def format_counts(table: dict[str, dict[str, dict[str, int]]]) -> str:
    """Counts per domain x kind x language as a text table, one block per domain, with totals."""
    from kexaone.eval.safety.suite import ALL_KINDS, LANGS

    langs = list(LANGS) + sorted({lang for d in table.values() for k in d.values() for lang in k} - set(LANGS))
    width = max(len(x) for x in ALL_KINDS) + 2
    lines = []
    grand = 0
    for domain, by_kind in table.items():
        lines.append(f"{domain}")
        lines.append(" " * width + "".join(f"{lang:>6}" for lang in langs) + f"{'total':>8}")
        for kind in [k for k in ALL_KINDS if k in by_kind]:
            row = by_kind[kind]
            n = sum(row.values())
            grand += n
            lines.append(f"  {kind:<{width - 2}}" + "".join(f"{row.get(lang, 0):>6}" for lang in langs) + f"{n:>8}")
        lines.append("")
    lines.append(f"total instances: {grand}")
    return "\n".join(lines)


def _suite(args) -> int:
    from kexaone.eval.safety.suite import counts, load_suite
    from kexaone.eval.safety.taxonomy import load_taxonomy

    items = load_suite(args.split)
    table = counts(items)
    if args.json:
        print(json.dumps({"split": args.split, "n": len(items), "counts": table}, ensure_ascii=False, indent=1))
        return 0
    print(f"KGC-Safety-style suite, split {args.split}: {len(items)} instances "
          f"({sum(not i.benign for i in items)} harmful, {sum(i.benign for i in items)} over-refusal)\n")
    print(format_counts(table))
    per_area: dict[str, int] = {}
    for it in items:
        if not it.benign:
            per_area[it.risk_area] = per_area.get(it.risk_area, 0) + 1
    areas = load_taxonomy().areas
    covered = sum(1 for a in areas if per_area.get(a))
    if per_area:
        print(f"risk areas with harmful instances: {covered}/{len(areas)}; "
              f"instances per area: min {min(per_area.get(a, 0) for a in areas)}, max {max(per_area.values())}")
    return 0


def _expand(args) -> int:
    from kexaone.eval.safety.expand import ExpandConfig, api_key_from_env, expand

    cfg = ExpandConfig(
        endpoint=args.endpoint, out=args.out, api_model=args.api_model, api_key=api_key_from_env(args.api_key_env),
        per_area=args.per_area, areas=args.areas.split(",") if args.areas else None, temperature=args.temperature,
        max_rounds=args.max_rounds, timeout=args.timeout, max_retries=args.max_retries, seed=args.seed,
    )
    try:
        stats = expand(cfg, progress=sys.stderr.isatty())
    except ConnectionError as e:  # the endpoint is down or keeps failing: a message, not a traceback
        print(f"kexaone safety expand: error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}: {stats.accepted} new instances from {stats.calls} generation calls "
          f"({stats.exact_duplicates} exact and {stats.near_duplicates} near duplicates dropped, "
          f"{stats.unparsed_replies} unreadable replies, {stats.retries} retried requests)")
    if stats.short_areas:
        print(f"{len(stats.short_areas)} risk areas still below {args.per_area} instances: "
              + ", ".join(f"{a} (-{n})" for a, n in list(stats.short_areas.items())[:20]))
    return 0
