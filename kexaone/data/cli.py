"""The `kexaone data` command: write the synthetic corpus, tokenize sources into the shard cache, inspect a cache,
and export the held-out synthetic tasks.

    kexaone data corpus --out DIR [--size default]         write the embedded corpus as JSONL (+ manifest.json)
    kexaone data tokenize SPEC... --tokenizer DIR --cache DIR  tokenize `path[@weight]` sources (cached)
    kexaone data info CACHE_DIR [--heldout 0.01]            documents, tokens, bytes/token and tags of a cache
    kexaone data tasks --out FILE [--size default]          held-out task items as JSONL

Pre-tokenizing once is useful before a multi-node run: every rank then finds the cache instead of tokenizing.
This module only parses arguments and prints; the work is done in kexaone.data.
"""

from __future__ import annotations

import argparse
import json

from kexaone.data.sources import TXT_MODES  # light: the readers import pyarrow/datasets only when used

HELP = "prepare data: write the synthetic corpus, tokenize sources, inspect token caches, export held-out tasks"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)
    c = sub.add_parser("corpus", help="write the embedded synthetic corpus as JSONL")
    c.add_argument("--out", required=True, help="output directory")
    c.add_argument("--size", default="default", choices=("tiny", "default", "large"))
    c.add_argument("--seed", type=int, default=0, help="world seed (the held-out tasks must use the same)")

    t = sub.add_parser("tokenize", help="tokenize sources into the token-shard cache")
    t.add_argument("specs", nargs="+", help="sources: path[@weight] (txt, jsonl, parquet, datasets dir, glob)")
    t.add_argument("--tokenizer", required=True, help="tokenizer directory (tokenizer.json)")
    t.add_argument("--cache", required=True, help="cache directory for the token shards")
    t.add_argument("--text-field", default="text", help="JSONL field / Parquet column holding the text")
    t.add_argument("--txt-mode", default="line", choices=TXT_MODES,
                   help="plain text: one document per line, one per file, or per line with its line ending")
    t.add_argument("--workers", type=int, default=None, help="parallel encode calls (default: CPU cores, <= 8)")

    i = sub.add_parser("info", help="describe a token-shard cache directory")
    i.add_argument("cache_dir")
    i.add_argument("--heldout", type=float, default=0.01, help="held-out fraction to report")

    k = sub.add_parser("tasks", help="export the held-out synthetic task items as JSONL")
    k.add_argument("--out", required=True, help="output .jsonl file")
    k.add_argument("--size", default="default", choices=("tiny", "default", "large"))
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--items", type=int, default=100, help="items per task")


def run(args: argparse.Namespace) -> int:
    return {"corpus": _corpus, "tokenize": _tokenize, "info": _info, "tasks": _tasks}[args.data_command](args)


def _corpus(args: argparse.Namespace) -> int:
    from kexaone.data.synthetic import write_corpus

    paths = write_corpus(args.out, size=args.size, seed=args.seed)
    for domain, p in paths.items():
        print(f"{domain:<10} {p}")
    return 0


def _tokenize(args: argparse.Namespace) -> int:
    from kexaone.data.shards import build_token_shards
    from kexaone.data.sources import parse_spec
    from kexaone.tokenizer import KExaoneTokenizer

    tok = KExaoneTokenizer.from_dir(args.tokenizer)
    for spec in args.specs:
        s = build_token_shards(parse_spec(spec).path, tok, args.cache, num_workers=args.workers,
                               text_field=args.text_field, txt_mode=args.txt_mode, progress=True)
        print(f"{spec}: {s.num_documents} documents, {s.num_tokens} tokens -> {s.path}")
    return 0


def _info(args: argparse.Namespace) -> int:
    from kexaone.data.shards import TokenShards

    s = TokenShards.load(args.cache_dir)
    _, held = s.split_indices(args.heldout)
    by_tag = s.documents_by_tag()
    info = {
        "path": str(s.path), "source": s.meta.get("source"), "documents": s.num_documents, "tokens": s.num_tokens,
        "bytes": s.num_bytes, "bytes_per_token": round(s.num_bytes / max(1, s.num_tokens), 3),
        "vocab_size": s.vocab_size, "eot_id": s.eot_id, "heldout_documents": int(len(held)),
        "tags": {t: int(len(ix)) for t, ix in by_tag.items()},
    }
    print(json.dumps(info, indent=1, ensure_ascii=False))
    return 0


def _tasks(args: argparse.Namespace) -> int:
    from kexaone.data.synthetic.tasks import build_tasks
    from kexaone.utils.io import atomic_open

    tasks = build_tasks(args.size, seed=args.seed, n_items=args.items)
    n = 0
    with atomic_open(args.out, "w") as f:
        for name, task in tasks.items():
            for it in task.items:
                rec = {"task": name, "prompt": it.prompt, "answer": it.answer, "lang": it.lang,
                       "choices": list(it.choices) if it.choices else None, "metric": task.metric,
                       "chance_baseline": task.chance_baseline}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
    print(f"wrote {n} items of {len(tasks)} tasks to {args.out}")
    return 0
