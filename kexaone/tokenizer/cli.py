"""`kexaone tokenizer`: train a SuperBPE tokenizer (`train`), measure one against a baseline (`eval`), or show how
a text is split (`encode`). Heavy imports stay inside the handlers so `kexaone --help` stays fast."""

from __future__ import annotations

import argparse
import json
import sys

_TEXT_FIELD_HELP = "JSONL field / Parquet or `datasets` column holding the text (default: text)"
HELP = "Train a SuperBPE tokenizer (train), measure bytes/token against a baseline (eval), or split a text (encode)."


def _allocation(value: str) -> dict[str, float]:
    """`en=2,ko=3,other=1`, or `none` for one shared stage-2 budget."""
    if value.strip().lower() == "none":
        return {}
    out: dict[str, float] = {}
    for part in value.split(","):
        name, sep, weight = part.partition("=")
        try:
            if not sep:
                raise ValueError
            out[name.strip()] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(f"bad allocation {part!r}: write NAME=WEIGHT,... e.g. en=2,ko=3,other=1")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tokenizer_command", metavar="{train,eval,encode}")
    sub.required = True

    t = sub.add_parser("train", help="train a SuperBPE (or, with --transition = --vocab-size, plain BPE) tokenizer")
    t.add_argument("--input", nargs="+", required=True, metavar="SOURCE",
                   help="text/JSONL/Parquet/code files, directories, globs, `datasets` directories or hf:NAME (read "
                        "by kexaone.data.sources); append :LANG (en, ko, ja, de, es, vi, code, stem, ...) to fix a "
                        "source's language, otherwise it is detected per line")
    t.add_argument("--text-field", default="text", help=_TEXT_FIELD_HELP)
    t.add_argument("--vocab-size", type=int, required=True, help="final vocabulary size, special tokens included")
    t.add_argument("--out", required=True, help="output directory (tokenizer.json, tokenizer_config.json, ...)")
    g = t.add_mutually_exclusive_group()
    g.add_argument("--transition", type=int, help="stage-1 vocabulary size t (vocab-size = plain BPE)")
    g.add_argument("--superword-fraction", type=float,
                   help="share of the vocabulary learned in stage 2 (default 0.2, as K-EXAONE)")
    t.add_argument("--allocation", type=_allocation, default=None,
                   help="stage-2 budget per language group, default en=2,ko=3,other=1; 'none' = one shared budget")
    t.add_argument("--max-words", type=int, default=4, help="longest superword, in words (default 4)")
    t.add_argument("--no-nfc", action="store_true", help="do not NFC-normalise (not recommended)")
    t.add_argument("--special-token", action="append", default=[], metavar="TOKEN",
                   help="extra special token after the standard K-EXAONE ones (repeatable)")
    t.add_argument("--workers", type=int, default=None, help="counting processes (default min(4, CPUs))")
    t.add_argument("--sample-fraction", type=float, default=1.0, help="train on this random share of documents")
    t.add_argument("--seed", type=int, default=0, help="seed of the document sample")
    t.add_argument("--model-max-length", type=int, default=None, help="model_max_length in tokenizer_config.json")
    t.add_argument("--quiet", action="store_true", help="no progress bars")

    e = sub.add_parser("eval", help="bytes/token, superword share and round trip per file, beside a baseline")
    e.add_argument("--tokenizer", required=True, help="tokenizer directory (kexaone or any HF tokenizer.json)")
    e.add_argument("--input", nargs="+", required=True, metavar="[NAME=]SOURCE",
                   help="text files (one document per line), JSONL/Parquet/`datasets` (the text field of each "
                        "record), code files (one document each), directories or globs")
    e.add_argument("--text-field", default="text", help=_TEXT_FIELD_HELP)
    e.add_argument("--baseline", default=None, help="baseline tokenizer directory to compare with")
    e.add_argument("--json", default=None, help="also write the rows as JSON to this file")

    c = sub.add_parser("encode", help="print the tokens of a text")
    c.add_argument("--tokenizer", required=True, help="tokenizer directory")
    c.add_argument("text", nargs="?", default=None, help="text to encode (default: read stdin)")


def _train(args) -> int:
    from pathlib import Path

    from kexaone.tokenizer.superbpe import train_superbpe

    # Path objects: on the command line every input is a file spec, and a missing one is an error.
    tok = train_superbpe(
        [Path(p) for p in args.input], args.vocab_size, out_dir=args.out, transition=args.transition,
        superword_fraction=args.superword_fraction, allocation=args.allocation, max_words=args.max_words,
        nfc=not args.no_nfc, special_tokens=args.special_token, workers=args.workers,
        sample_fraction=args.sample_fraction, seed=args.seed, show_progress=not args.quiet,
        model_max_length=args.model_max_length, text_field=args.text_field,
    )
    s = tok.train_stats
    print(f"saved {args.out}: vocab {s.vocab_size} (transition {s.transition}, stage-2 merges {s.stage2_merges} "
          f"{s.stage2_merges_per_group}, refused pairs {s.stage2_refused_pairs}); "
          f"{s.seconds_stage1 + s.seconds_count + s.seconds_stage2:.1f}s")
    return 0


def _eval(args) -> int:
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.evaluate import compare, load_documents, markdown_table, vocab_superword_share
    from kexaone.utils.io import atomic_write_text

    tok = KExaoneTokenizer.from_dir(args.tokenizer)
    base = KExaoneTokenizer.from_dir(args.baseline) if args.baseline else None
    docs = dict(load_documents(spec, args.text_field) for spec in args.input)
    rows = compare(tok, docs, base)
    print(f"tokenizer {args.tokenizer}: vocab {tok.vocab_size}, superwords {100 * vocab_superword_share(tok):.1f}% "
          f"of the vocabulary")
    if base is not None:
        print(f"baseline {args.baseline}: vocab {base.vocab_size}, superwords "
              f"{100 * vocab_superword_share(base):.1f}% of the vocabulary")
    print(markdown_table(rows))
    if args.json:
        atomic_write_text(args.json, json.dumps(rows, ensure_ascii=False, indent=2) + "\n")
    return 0 if all(r["round_trip_ok"] for r in rows) else 1


def _encode(args) -> int:
    from kexaone.tokenizer import KExaoneTokenizer

    tok = KExaoneTokenizer.from_dir(args.tokenizer)
    text = sys.stdin.read() if args.text is None else args.text
    ids = tok.encode(text)
    print(json.dumps({"ids": ids, "tokens": [tok.decode([i]) for i in ids]}, ensure_ascii=False))
    return 0


def run(args) -> int:
    return {"train": _train, "eval": _eval, "encode": _encode}[args.tokenizer_command](args)
