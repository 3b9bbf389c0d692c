"""Task families of `kexaone eval` and the resolution of `--tasks` entries into harness tasks.

An entry is a built-in name (`gsm8k`, `math500`, `flores`, `flores-ko-en`, `niah`, `ruler`, `ruler-vt`,
`arithmetic`, `retrieval`, `heldout`, `kgc-safety`, ...; see BUILTIN_HELP) or a user file `FAMILY:PATH` (JSONL in
the family's documented fields), reported under the file's stem. Built-ins that read the shared evaluation corpora
(kexaone.pipeline.corpus.corpora_dir) are skipped with a message when those files are absent.
"""

from __future__ import annotations

from pathlib import Path

from kexaone.eval.families.base import Family, read_jsonl
from kexaone.eval.families.chat import Chat
from kexaone.eval.families.ifeval import IFEval
from kexaone.eval.families.judge import Judge
from kexaone.eval.families.longctx import NIAH, RULER_KINDS, Ruler, default_lengths, make_niah_items, \
    make_ruler_items
from kexaone.eval.families.math import Math
from kexaone.eval.families.mcq import MCQ
from kexaone.eval.families.synthetic import Heldout, Synthetic, groups_to_items, synthetic_tasks
from kexaone.eval.families.safety import KGCSafety
from kexaone.eval.families.translation import Translation

FAMILIES: dict[str, type[Family]] = {f.name: f for f in (MCQ, Math, IFEval, Translation, Judge, Synthetic, Heldout,
                                                         KGCSafety, Chat)}
FLORES_LANGS = ("ko", "en", "es", "de", "ja", "vi")
SYNTHETIC_NAMES = {"arithmetic": "arithmetic", "crosslingual_recall": "crosslingual_recall",
                   "recall": "crosslingual_recall", "retrieval": "retrieval", "code_completion": "code_completion",
                   "code": "code_completion"}
BUILTIN_HELP = {
    "gsm8k": "GSM8K test (math family), from <corpora>/tasks/gsm8k_test.jsonl",
    "math500": "MATH-500 (math family), from <corpora>/tasks/math500_test.jsonl",
    "flores": "FLORES pairs en<->{ko,es,de,ja,vi} (translation), from <corpora>/text/*.txt; one pair: flores-ko-en",
    "niah": "needle in a haystack over --niah-lengths x --niah-depths with a heat map",
    "ruler": f"RULER-style {', '.join(RULER_KINDS)} at --ruler-length; one kind: ruler-vt",
    "synthetic": "the speedrun's held-out tasks: arithmetic, crosslingual_recall (recall), retrieval, "
                 "code_completion (code)",
    "heldout": "bits per byte of <corpora>/text/*.txt per language (local model only)",
    "sft-chat": "the embedded SFT set's held-out chat tasks (chat family), each prompt in both reasoning modes",
    "kgc-safety": "the K-AUT safety suite (kexaone.eval.safety), judged by --judge-endpoint or a refusal rule",
}
DEFAULT_RULER_ITEMS = 20
DEFAULT_HELDOUT_DOCS = 50


class Skipped(Exception):
    """A built-in whose data is not on this machine."""


def corpora_dir() -> Path:
    from kexaone.pipeline.corpus import corpora_dir as _dir

    return _dir()


def _limit(items: list, limit: int | None) -> list:
    return items[:limit] if limit else items


def _corpus_file(rel: str) -> Path:
    p = corpora_dir() / rel
    if not p.is_file():
        raise Skipped(f"{p} not found (set KEXAONE_CORPORA to the evaluation corpora directory)")
    return p


def _flores_pairs(name: str) -> list[tuple[str, str]]:
    if name == "flores":
        return [(x, "en") for x in FLORES_LANGS if x != "en"] + [("en", x) for x in FLORES_LANGS if x != "en"]
    parts = name.split("-")
    if len(parts) != 3 or parts[1] not in FLORES_LANGS or parts[2] not in FLORES_LANGS or parts[1] == parts[2]:
        raise ValueError(f"FLORES task {name!r} must be flores-SRC-TGT with two different languages of "
                         f"{FLORES_LANGS}")
    return [(parts[1], parts[2])]


def flores_items(src: str, tgt: str, limit: int | None) -> list[dict]:
    a = _corpus_file(f"text/{src}.txt").read_text(encoding="utf-8").splitlines()
    b = _corpus_file(f"text/{tgt}.txt").read_text(encoding="utf-8").splitlines()
    if len(a) != len(b):
        raise ValueError(f"FLORES files {src}.txt and {tgt}.txt are not aligned ({len(a)} vs {len(b)} lines)")
    rows = [{"id": str(i), "source": x, "reference": y, "src_lang": src, "tgt_lang": tgt}
            for i, (x, y) in enumerate(zip(a, b)) if x.strip() and y.strip()]
    return Translation().load(_limit(rows, limit), f"flores-{src}-{tgt}")


def resolve_tasks(entries: list[str], config, backend=None, judge=None, log=print) -> list:
    """Harness tasks for `--tasks` entries (built-in names and FAMILY:PATH files). Built-ins whose data is absent
    are skipped with a message through `log`; an unknown name or family raises ValueError."""
    from kexaone.eval.harness import Task

    tasks: list[Task] = []
    for raw in entries:
        entry = raw.strip()
        if not entry:
            continue
        try:
            if ":" in entry:
                fam_name, _, path = entry.partition(":")
                if fam_name in ("niah", "ruler") or fam_name.startswith("ruler-"):
                    raise ValueError(f"{fam_name} tasks are generated: run them by name (--tasks {fam_name}), "
                                     "not from a file")
                if fam_name not in FAMILIES:
                    raise ValueError(f"unknown task family {fam_name!r} in {entry!r}; families: {sorted(FAMILIES)}")
                fam = FAMILIES[fam_name]()
                items = _limit(fam.load(read_jsonl(path), path), config.limit)
                tasks.append(Task(name=Path(path).stem, family=fam, items=items, source=str(path)))
            else:
                tasks += _builtin(entry, config, backend, judge)
        except Skipped as e:
            log(f"[eval] skipping {entry}: {e}")
    return tasks


def _builtin(name: str, config, backend, judge) -> list:
    from kexaone.eval.harness import Task

    if name in ("gsm8k", "math500"):
        path = _corpus_file(f"tasks/{'gsm8k_test' if name == 'gsm8k' else 'math500_test'}.jsonl")
        fam = Math()
        return [Task(name, fam, _limit(fam.load(read_jsonl(path), name), config.limit), source=str(path))]
    if name == "flores" or name.startswith("flores-"):
        return [Task(f"flores-{s}-{t}", Translation(), flores_items(s, t, config.limit), source="flores")
                for s, t in _flores_pairs(name)]
    if name == "niah":
        gen = config.max_new_tokens or NIAH.default_max_tokens
        lengths = config.niah_lengths or default_lengths(getattr(backend, "max_context", None))
        count = _counter(backend)
        items = make_niah_items(lengths, config.niah_depths, count, gen, haystack=config.niah_haystack,
                                seed=config.seed)
        return [Task("niah", NIAH(), items, options={"lengths": list(lengths), "depths": list(config.niah_depths),
                                                      "haystack": config.niah_haystack})]
    if name == "ruler" or name.startswith("ruler-"):
        kinds = RULER_KINDS if name == "ruler" else (name[len("ruler-"):],)
        for k in kinds:
            if k not in RULER_KINDS:
                raise ValueError(f"unknown RULER task {name!r}; kinds: {', '.join('ruler-' + x for x in RULER_KINDS)}")
        length = config.ruler_length or min(getattr(backend, "max_context", None) or 4096, 4096)
        gen = config.max_new_tokens or Ruler.default_max_tokens
        n = config.limit or DEFAULT_RULER_ITEMS
        return [Task(f"ruler-{k}", Ruler(), make_ruler_items(k, length, n, _counter(backend), gen,
                                                              haystack=config.niah_haystack, seed=config.seed),
                     options={"kind": k, "length": length, "haystack": config.niah_haystack}) for k in kinds]
    if name == "synthetic" or name in SYNTHETIC_NAMES:
        names = list(dict.fromkeys(SYNTHETIC_NAMES.values())) if name == "synthetic" else [SYNTHETIC_NAMES[name]]
        tok = getattr(backend, "tokenizer", None)
        max_ctx = getattr(backend, "max_context", None)
        return synthetic_tasks(names, size=config.synthetic_size, seed=config.seed, n_items=config.limit or 100,
                               tokenizer=tok if max_ctx else None,
                               max_prompt_tokens=max_ctx - 16 if tok is not None and max_ctx else None)
    if name == "heldout":
        groups = {}
        for lang in FLORES_LANGS:
            p = corpora_dir() / "text" / f"{lang}.txt"
            if p.is_file():
                lines = [x for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]
                groups[("flores", lang)] = lines[:config.limit or DEFAULT_HELDOUT_DOCS]
        if not groups:
            raise Skipped(f"no {corpora_dir()}/text/*.txt found")
        return [Task("heldout", Heldout(), groups_to_items(groups), source=str(corpora_dir() / "text"))]
    if name == "sft-chat":
        return [sft_chat_task(config.limit)]
    if name == "kgc-safety":
        from kexaone.eval.families.safety import safety_task

        return [safety_task(config)]
    raise ValueError(f"unknown task {name!r}: give a built-in ({', '.join(sorted(BUILTIN_HELP))}, flores-SRC-TGT, "
                     f"ruler-KIND, {', '.join(sorted(SYNTHETIC_NAMES))}) or FAMILY:PATH with a family of "
                     f"{sorted(FAMILIES)}")


def _counter(backend):
    fn = getattr(backend, "count_tokens", None)
    return fn if fn is not None else (lambda text: max(1, (len(text) + 3) // 4))


def sft_chat_task(limit: int | None = None, n_heldout: int = 80, seed: int = 0):
    """The default SFT set's held-out split (kexaone.data.synthetic.chat_set) as a chat task, both modes."""
    from kexaone.data.synthetic.chat_set import build_split
    from kexaone.data.synthetic.world import World
    from kexaone.eval.harness import Task

    held = build_split(World(0, "default"), n_heldout, seed, heldout=True, unique=True)
    rows = [dict(e.record(t), id=e.id) for e in held for t in (True, False)]
    return Task("sft-chat", Chat(), _limit(Chat().load(rows, "sft-chat"), limit), source="chat_set heldout")
