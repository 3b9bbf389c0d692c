"""Long-context probes, generated (no data file): needle in a haystack and RULER-style retrieval and tracing.

- `niah`: one needle ("The special magic number for {key} is {value}.", a 7-digit value) placed at a depth (0% =
  start, 100% = end of the haystack, at a sentence boundary) in a haystack sized so the prompt has the grid's
  length in tokens, measured with the model's tokenizer (an endpoint: its --tokenizer, else the server's
  /tokenize, else about 4 characters per token, flagged `approximate_lengths`). Scored by exact match: the reply
  must contain the value. `summarize` draws the
  lengths x depths heat map (`<out>/niah_<task>.png`).
- `ruler` kinds (after RULER, NVIDIA 2024; scoring = string_match_all, the mean over expected strings of whether the
  reply contains each, case-insensitive):
  `multikey` (4 needles with different keys, one asked), `multivalue` (4 values for one key, all asked),
  `multiquery` (4 keys asked at once), `vt` (variable tracking: `VAR X = 12345` then a chain of 4
  `VAR Y = VAR X` assignments among noise; every variable holding the value must be named).

Haystacks: `noise` (a handful of plain sentences of our own, repeated) or `world` (the synthetic corpus's knowledge
documents: natural-looking text about a made-up world). Items are a pure function of (seed, lengths, depths).
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from kexaone.eval.families.base import Family, reply_text, summarize_scores

NOISE = ("The lake was calm this morning. A few clouds drifted east. The road past the mill is long and quiet. "
         "Somebody left a lamp on in the old house. Birds sang in the hedge for a while.")
TEMPLATE_MARGIN = 24
"""Tokens kept free for the chat template's wrapping of the user message."""
RULER_KINDS = ("multikey", "multivalue", "multiquery", "vt")


def haystack_sentences(kind: str, seed: int = 0) -> list[str]:
    if kind == "noise":
        return [s.strip() + "." for s in NOISE.split(".") if s.strip()]
    if kind == "world":
        from kexaone.data.synthetic.knowledge import knowledge_documents
        from kexaone.data.synthetic.world import World

        out: list[str] = []
        for doc in knowledge_documents(World(seed, "tiny"), seed):
            if doc.tag and not doc.tag.endswith("/en"):
                continue
            # English sentences only (parallel documents mix languages; their "[xx]" markers are dropped).
            for sent in doc.text.replace("\n", " ").split(". "):
                sent = sent.strip().rstrip(".")
                if len(sent) > 3 and sent.isascii() and "[" not in sent and "?" not in sent:
                    out.append(sent + ".")
            if len(out) > 4000:
                break
        if not out:
            raise ValueError("the synthetic world produced no English haystack text")
        return out
    raise ValueError(f"haystack must be 'noise' or 'world', got {kind!r}")


def _key(rng: random.Random) -> str:
    from kexaone.data.synthetic.names import NameFactory

    f = NameFactory(rng)
    return f"{f.word(2, 2)}-{f.word(2, 3)}"


def _value(rng: random.Random) -> str:
    return str(rng.randrange(1_000_000, 10_000_000))


def needle(key: str, value: str) -> str:
    return f"The special magic number for {key} is {value}."


def _fill(sentences: list[str], n: int, inserts: list[tuple[float, str]]) -> str:
    """n filler sentences (cycled) with each (depth %, sentence) inserted at the nearest boundary."""
    body = [sentences[i % len(sentences)] for i in range(n)]
    for depth, s in sorted(inserts, key=lambda x: -x[0]):  # deepest first keeps earlier indices valid
        body.insert(int(round(depth / 100.0 * len(body))), s)
    return " ".join(body)


def fit_prompt(make, count_tokens, budget: int) -> tuple[str, int]:
    """The longest `make(n)` (n filler sentences) whose token count is <= budget; (prompt, its tokens)."""
    lo, hi = 0, 1
    if count_tokens(make(0)) > budget:
        raise ValueError(f"a prompt budget of {budget} tokens (the length minus the reply and {TEMPLATE_MARGIN} "
                         "template tokens) cannot hold even the question and the needles; use longer lengths")
    while count_tokens(make(hi)) <= budget:
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(make(mid)) <= budget:
            lo = mid
        else:
            hi = mid
    p = make(lo)
    return p, count_tokens(p)


def niah_prompt(haystack: str, key: str) -> str:
    return ("A special magic number is hidden somewhere in the text below. Read it carefully.\n\n<text>\n"
            f"{haystack}\n</text>\n\nWhat is the special magic number for {key}? Reply with the number only.")


def default_lengths(max_context: int | None) -> tuple[int, ...]:
    top = min(max_context or 4096, 8192)
    return tuple(sorted({max(256, top // 8), max(256, top // 4), max(256, top // 2), top}))


def make_niah_items(lengths, depths, count_tokens, max_new_tokens: int, haystack: str = "noise",
                    seed: int = 0, per_cell: int = 1) -> list[dict]:
    sentences = haystack_sentences(haystack, seed)
    items = []
    for length in lengths:
        for depth in depths:
            if not 0 <= depth <= 100:
                raise ValueError(f"niah depths are percentages in [0, 100], got {depth}")
            for k in range(per_cell):
                rng = random.Random(f"kexaone-niah|{seed}|{length}|{depth}|{k}")
                key, value = _key(rng), _value(rng)
                budget = length - max_new_tokens - TEMPLATE_MARGIN
                prompt, n = fit_prompt(lambda m: niah_prompt(_fill(sentences, m, [(depth, needle(key, value))]),
                                                             key), count_tokens, budget)
                items.append({"id": f"L{length}_D{depth:g}_{k}", "length": int(length), "depth": float(depth),
                              "prompt": prompt, "prompt_tokens": n, "refs": [value]})
    return items


def _ruler_item(kind: str, rng: random.Random, sentences, count_tokens, budget: int) -> tuple[str, list[str]]:
    if kind == "vt":
        names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(5)]
        value = str(rng.randrange(10_000, 100_000))
        chain = [f"VAR {names[0]} = {value}."] + [f"VAR {names[i]} = VAR {names[i - 1]}." for i in range(1, 5)]
        inserts = [(100.0 * (i + 0.5) / len(chain), s) for i, s in enumerate(chain)]
        q = (f"Find every variable that is assigned the value {value}, directly or through other variables, in "
             "the text above. Reply with the variable names only, separated by spaces.")
        refs = names
    else:
        n_keys = 1 if kind == "multivalue" else 4
        keys = [_key(rng) for _ in range(n_keys)]
        if kind == "multivalue":
            values = [_value(rng) for _ in range(4)]
            pairs = [(keys[0], v) for v in values]
            q = f"What are all the special magic numbers for {keys[0]}? Reply with the numbers only."
            refs = values
        else:
            values = [_value(rng) for _ in keys]
            pairs = list(zip(keys, values))
            if kind == "multikey":
                i = rng.randrange(len(keys))
                q = f"What is the special magic number for {keys[i]}? Reply with the number only."
                refs = [values[i]]
            else:
                q = (f"What are the special magic numbers for {', '.join(keys[:-1])} and {keys[-1]}? Reply with "
                     "the numbers only, in that order.")
                refs = values
        inserts = [(rng.uniform(0, 100), needle(k, v)) for k, v in pairs]

    def make(m: int) -> str:
        return ("Some special facts are hidden in the text below. Read it carefully.\n\n<text>\n"
                f"{_fill(sentences, m, inserts)}\n</text>\n\n{q}")

    prompt, n = fit_prompt(make, count_tokens, budget)
    return prompt, refs


def make_ruler_items(kind: str, length: int, n_items: int, count_tokens, max_new_tokens: int,
                     haystack: str = "noise", seed: int = 0) -> list[dict]:
    if kind not in RULER_KINDS:
        raise ValueError(f"ruler kind must be one of {RULER_KINDS}, got {kind!r}")
    sentences = haystack_sentences(haystack, seed)
    items = []
    for i in range(n_items):
        rng = random.Random(f"kexaone-ruler|{kind}|{seed}|{length}|{i}")
        prompt, refs = _ruler_item(kind, rng, sentences, count_tokens, length - max_new_tokens - TEMPLATE_MARGIN)
        items.append({"id": f"{kind}_L{length}_{i}", "length": int(length), "prompt": prompt, "refs": refs})
    return items


def string_match_all(pred: str, refs: list[str]) -> float:
    """Mean over refs of whether `pred` contains the ref (case-insensitive), as RULER scores."""
    p = pred.strip().lower()
    return sum(r.lower() in p for r in refs) / len(refs)


class _Generated(Family):
    default_max_tokens = 32

    def load(self, rows, source):
        raise ValueError(f"the {self.name} family is generated; run it by its built-in name, not FAMILY:PATH")

    def chunk_size(self, config):
        return min(config.chunk_size, 4)  # long prompts: small batches

    def run(self, items, ctx):
        replies = ctx.backend.chat_batch([[{"role": "user", "content": it["prompt"]}] for it in items],
                                         **ctx.gen_kwargs(self.default_max_tokens))
        out = []
        for it, rep in zip(items, replies):
            text = reply_text(rep)
            out.append({"prompt": it["prompt"], "response": text, "extracted": text.strip(), "refs": it["refs"],
                        "length": it["length"], "depth": it.get("depth"),
                        "score": string_match_all(text, it["refs"])})
        return out


class NIAH(_Generated):
    name = "niah"
    fields = "(generated: --niah-lengths, --niah-depths, --niah-haystack)"
    metric = "exact match (needle value in reply)"

    def summarize(self, records, ctx):
        s = summarize_scores(records, self.metric)
        cells: dict[tuple[int, float], list[float]] = {}
        for r in records:
            cells.setdefault((r["length"], r["depth"]), []).append(float(r["score"]))
        grid = {f"L={L} depth={D:g}%": sum(v) / len(v) for (L, D), v in sorted(cells.items())}
        s["breakdown"] = grid
        s["approximate_lengths"] = not getattr(ctx.backend, "exact_token_counts", False)
        png = Path(ctx.out_dir) / f"niah_{ctx.task.name}.png"
        draw_heatmap(cells, png, title=f"{ctx.task.name}")
        s["heatmap"] = png.name
        return s


class Ruler(_Generated):
    name = "ruler"
    fields = "(generated: multikey, multivalue, multiquery, vt; --ruler-length)"
    metric = "string_match_all"
    default_max_tokens = 64


def draw_heatmap(cells: dict[tuple[int, float], list[float]], path: Path, title: str = "") -> None:
    """Depth (rows) x context length (columns) grid of mean scores, red (0) to green (1)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from kexaone.utils.io import atomic_write_bytes

    lengths = sorted({L for L, _ in cells})
    depths = sorted({D for _, D in cells})
    grid = np.full((len(depths), len(lengths)), math.nan)
    for (L, D), v in cells.items():
        grid[depths.index(D), lengths.index(L)] = sum(v) / len(v)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(lengths), 1.0 + 0.5 * len(depths)))
    im = ax.imshow(grid, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), [str(L) for L in lengths])
    ax.set_yticks(range(len(depths)), [f"{D:g}%" for D in depths])
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("needle depth")
    ax.set_title(f"needle in a haystack {title}".strip())
    fig.colorbar(im, ax=ax, label="exact match")
    import io

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
