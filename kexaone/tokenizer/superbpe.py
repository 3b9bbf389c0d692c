"""SuperBPE training (Liu et al. 2025), as used for the K-EXAONE tokenizer (SPEC section 2).

Stage 1 is ordinary byte-level BPE over whitespace-bounded words (`pretokenize.STAGE1_PATTERN`) up to the transition
vocabulary size t; it runs in the Rust `tokenizers` BpeTrainer. Stage 2 re-cuts the corpus with the K-EXAONE
pre-tokenizer (`STAGE2_PATTERN`: letters joined by single spaces stay together), replays the stage-1 merges in rank
order on every pre-token type (through a Rust BPE model holding exactly those merges) and keeps merging up to the
final size. Merges that would make a token span more than `max_words` words or contain ": " are refused.

Stage 2 is incremental: a table of pre-token types with frequencies, pair counts kept per language group, one
priority queue per group with lazy deletion, and an index from each pair to the types containing it, so a merge
only touches the types it changes. The stage-2 budget is split between language groups (default en:ko:other =
2:3:1, as K-EXAONE): at each step the group furthest behind its share picks its most frequent pair, and the merge
is applied everywhere.

The result is a standard `tokenizer.json` whose BPE merge ranks reproduce the trained segmentation. This module
does not evaluate tokenizers (`evaluate.py`) or provide the command line (`cli.py`).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
import json
import multiprocessing as mp
import os
import random
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

from kexaone.data import sources
from kexaone.tokenizer import pretokenize
from kexaone.tokenizer.specials import special_tokens_with
from kexaone.tokenizer.wrapper import KExaoneTokenizer

DEFAULT_ALLOCATION = {"en": 2.0, "ko": 3.0, "other": 1.0}
# Markup files are read whole (kexaone.data.sources tags them "code/<ext>") but hold prose in natural languages.
_MARKUP = frozenset({"md", "rst", "tex"})
_PAIR_SHIFT = 1 << 24  # pair key = a * _PAIR_SHIFT + b: one Python int, vocabularies up to 16M ids
_BATCH_CHARS = 1 << 20  # texts per counting task: about 1M characters


@dataclass
class TrainStats:
    """What training did, written to `superbpe_training.json` next to the tokenizer."""

    vocab_size: int
    transition: int  # stage-1 vocabulary size reached (smaller than asked when stage 1 ran out of pairs)
    transition_requested: int
    num_special: int
    stage1_merges: int
    stage2_merges: int
    stage2_refused_pairs: int
    stage2_merges_per_group: dict[str, int]
    allocation: dict[str, float]
    bytes_per_language: dict[str, int]
    pretoken_types: int
    seconds_stage1: float
    seconds_count: float
    seconds_stage2: float
    settings: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------------------------
# inputs


def _split_lang_tag(spec: str) -> tuple[str, str | None]:
    head, sep, tail = spec.rpartition(":")
    if sep and tail in pretokenize.LANGUAGES and head:
        return head, tail
    return spec, None


def _source_spec(spec: str, must_exist: bool) -> tuple[str, str | None] | None:
    """`path`, `dir`, `glob`, `datasets` directory or `hf:name`, with an optional `:lang` tag -> (source spec,
    lang) once `kexaone.data.sources` finds something to read there. With must_exist, nothing there is its
    FileNotFoundError; otherwise None (the string is then an inline text)."""
    path, lang = _split_lang_tag(spec)
    if path.startswith(sources.HUB_PREFIX) and not any(c.isspace() for c in path):
        return path, lang
    try:
        sources.resolve_files(sources.parse_spec(path).path)
    except (OSError, ValueError):
        # Something that exists but cannot be read (an unsupported file type) is an error either way; a string
        # naming nothing (or no valid path at all: too long, a NUL byte) is an inline text.
        if must_exist or os.path.exists(path):
            raise
        return None
    return path, lang


@dataclass(frozen=True)
class TrainingInputs:
    """The trainer's input split into document sources (read through `kexaone.data.sources`) and inline texts,
    each with its language (None = detected per line)."""

    files: list[tuple[str, str | None]]
    texts: list[tuple[str, str | None]]
    text_field: str = "text"  # JSONL field / Parquet or `datasets` column holding the text


def resolve_inputs(files_or_texts, text_field: str = "text") -> TrainingInputs:
    """Split the trainer's input into document sources and inline texts.

    Rules: a `Path` must name an existing file, directory, glob or `datasets` directory (FileNotFoundError
    otherwise); a `(text, lang)` tuple is an inline text with its language; a `str` is a source spec (as a Path,
    optionally suffixed with a language tag such as `ko.txt:ko`) when it names something that exists, and an
    inline text otherwise. A generator of strings is always inline texts. Already resolved inputs pass through."""
    if isinstance(files_or_texts, TrainingInputs):
        return files_or_texts
    if isinstance(files_or_texts, (str, Path)):
        files_or_texts = [files_or_texts]
    as_texts = isinstance(files_or_texts, Iterator)
    files: list[tuple[str, str | None]] = []
    texts: list[tuple[str, str | None]] = []
    for item in files_or_texts:
        if isinstance(item, tuple):
            if len(item) != 2 or not isinstance(item[0], str):
                raise ValueError(f"inline text must be (text, lang), got {item!r:.80}")
            if item[1] is not None and item[1] not in pretokenize.LANGUAGES:
                raise ValueError(f"language {item[1]!r} is not one of {pretokenize.LANGUAGES}")
            texts.append(item)
        elif isinstance(item, Path):
            files.append(_source_spec(str(item), must_exist=True))
        elif isinstance(item, str):
            found = None if as_texts or "\n" in item else _source_spec(item, must_exist=False)
            if found:
                files.append(found)
            else:
                texts.append((item, None))
        else:
            raise ValueError(f"training input must be a path, a string or a (text, lang) tuple, got {type(item)}")
    return TrainingInputs(files, texts, text_field)


def _source_texts(spec: str, lang: str | None, text_field: str) -> Iterator[tuple[str, str | None]]:
    """Documents of one source: text files a line each, line ending kept (so each line gets its own language and
    newlines are learned), JSONL/Parquet/`datasets` records their text field, code and markup files whole (so
    indentation is learned in context; code is language "code", markup prose is detected per line)."""
    for doc in sources.iter_tagged_documents(spec, text_field=text_field, txt_mode="line_eol"):
        ext = doc.tag[len("code/"):] if doc.tag.startswith("code/") else None
        yield doc.text, lang or ("code" if ext is not None and ext not in _MARKUP else None)


def iter_training_texts(inputs: TrainingInputs, sample_fraction: float = 1.0,
                        seed: int = 0) -> Iterator[tuple[str, str | None]]:
    """All training documents in a fixed order; with sample_fraction < 1 each is kept with that probability
    (seeded, so the sample is the same on every pass)."""
    rng = random.Random(seed)
    keep_all = sample_fraction >= 1.0
    docs = itertools.chain((d for spec, lang in inputs.files for d in _source_texts(spec, lang, inputs.text_field)),
                           inputs.texts)
    for item in docs:
        if keep_all or rng.random() < sample_fraction:
            yield item


def _batches(items: Iterable[tuple[str, str | None]]) -> Iterator[list[tuple[str, str | None]]]:
    batch: list[tuple[str, str | None]] = []
    size = 0
    for item in items:
        batch.append(item)
        size += len(item[0])
        if size >= _BATCH_CHARS:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _count_batch(args) -> tuple[Counter, Counter]:
    """Worker: stage-2 pre-token counts keyed by (pre-token, group), and UTF-8 bytes per detected language."""
    batch, groups, nfc = args
    counts: Counter = Counter()
    lang_bytes: Counter = Counter()
    findall = pretokenize.STAGE2_RE.findall
    for text, lang in batch:
        text = pretokenize.normalize(text, nfc)
        if lang is None and "\n" in text.rstrip("\r\n"):
            _count_mixed(text, groups, counts, lang_bytes)
            continue
        lang = lang or pretokenize.detect_language(text)
        lang_bytes[lang] += len(text.encode("utf-8"))
        group = pretokenize.language_group(lang, groups)
        for piece in findall(text):
            counts[(piece, group)] += 1
    return counts, lang_bytes


def _count_mixed(text: str, groups, counts: Counter, lang_bytes: Counter) -> None:
    """A multi-line document of unknown language: each line gets its own language, and each pre-token the group
    of the line it starts in. The document is still pre-tokenized whole, exactly as the encoder will see it."""
    starts: list[int] = []
    line_groups: list[str] = []
    pos = 0
    for line in text.splitlines(keepends=True):
        lang = pretokenize.detect_language(line)
        lang_bytes[lang] += len(line.encode("utf-8"))
        starts.append(pos)
        line_groups.append(pretokenize.language_group(lang, groups))
        pos += len(line)
    for m in pretokenize.STAGE2_RE.finditer(text):
        counts[(m.group(), line_groups[bisect.bisect_right(starts, m.start()) - 1])] += 1


# ---------------------------------------------------------------------------------------------------------------
# stage 1


def _stage1_merges(texts: Iterable[str], num_learned: int, show_progress: bool) -> list[tuple[str, str]]:
    """Byte-level BPE with whitespace-bounded pre-tokens, `num_learned` tokens beyond the 256 bytes; returns the
    merges (byte-level strings) in rank order."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pretokenize.STAGE1_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=256 + num_learned,
        show_progress=show_progress,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
    )
    # Lists of texts cross into Rust once per batch instead of once per line.
    it = iter(texts)
    tok.train_from_iterator(iter(lambda: list(itertools.islice(it, 1024)), []), trainer)
    merges = json.loads(tok.to_str())["model"]["merges"]
    return [tuple(m) if isinstance(m, list) else tuple(m.split(" ", 1)) for m in merges]


# ---------------------------------------------------------------------------------------------------------------
# stage 2


def _violates(merged: bytes, max_words: int) -> bool:
    """SuperBPE's constraints on a stage-2 token: at most `max_words` words, never the ": " separator (which keeps
    "Answer: A"-style formats split)."""
    return b": " in merged or len(merged.split()) > max_words


class _Stage2:
    """Incremental BPE over pre-token types (see the module docstring).

    Pair counts live in one dict per language group; `heaps[g]` holds (-count, pair) entries that may be stale
    (checked against the dict when popped). The pair -> types index starts as a CSR table built with numpy (pairs of
    the replayed stage-1 segmentation) and grows in `where` for pairs created by stage-2 merges."""

    def __init__(self, words: list[list[int]], freqs: list[int], groups: list[int], num_groups: int,
                 token_bytes: list[bytes], max_words: int):
        import numpy as np

        self.words = words
        self.freqs = freqs
        self.groups = groups
        self.token_bytes = token_bytes
        self.token_index = {b: i for i, b in enumerate(token_bytes) if b}
        self.max_words = max_words
        self.refused: set[int] = set()
        self.where: dict[int, list[int]] = {}
        lens = np.fromiter((len(w) for w in words), dtype=np.int64, count=len(words))
        flat = np.fromiter(itertools.chain.from_iterable(words), dtype=np.int64, count=int(lens.sum()))
        word_of = np.repeat(np.arange(len(words), dtype=np.int64), lens)
        same = word_of[:-1] == word_of[1:]  # adjacent symbols of one type form a pair
        keys_P = flat[:-1][same] * _PAIR_SHIFT + flat[1:][same]
        wid_P = word_of[:-1][same]
        freq_P = np.asarray(freqs, dtype=np.int64)[wid_P]
        group_P = np.asarray(groups, dtype=np.int64)[wid_P]
        self.counts: list[dict[int, int]] = []
        self.heaps: list[list[tuple[int, int]]] = []
        for g in range(num_groups):
            sel = group_P == g
            uniq, inverse = np.unique(keys_P[sel], return_inverse=True)
            totals = np.bincount(inverse, weights=freq_P[sel], minlength=len(uniq)).astype(np.int64)
            self.counts.append(dict(zip(uniq.tolist(), totals.tolist())))
            # Ties go to the smaller pair key (older tokens first): results never depend on hashing order.
            heap = list(zip((-totals).tolist(), uniq.tolist()))
            heapq.heapify(heap)
            self.heaps.append(heap)
        order = np.argsort(keys_P, kind="stable")
        self.csr_keys, starts = np.unique(keys_P[order], return_index=True)
        self.csr_starts = np.append(starts, len(order))
        self.csr_words = wid_P[order]

    def _types_with(self, k: int) -> set[int]:
        import numpy as np

        out = set(self.where.pop(k, ()))
        p = int(np.searchsorted(self.csr_keys, k))
        if p < len(self.csr_keys) and int(self.csr_keys[p]) == k:
            out.update(self.csr_words[self.csr_starts[p]:self.csr_starts[p + 1]].tolist())
        return out

    def best(self, g: int) -> int | None:
        """The most frequent admissible pair of group g (lazy deletion of stale heap entries)."""
        heap, counts = self.heaps[g], self.counts[g]
        while heap:
            negn, k = heap[0]
            n = counts.get(k, 0)
            if n <= 0 or n != -negn or k in self.refused:
                heapq.heappop(heap)
                continue
            a, b = divmod(k, _PAIR_SHIFT)
            if _violates(self.token_bytes[a] + self.token_bytes[b], self.max_words):
                self.refused.add(k)
                heapq.heappop(heap)
                continue
            return k
        return None

    def merge(self, k: int) -> int:
        """Apply the merge of pair k to every type that contains it; returns the new token's id. Only the pairs
        next to each merged occurrence change, so only those counts are updated."""
        a, b = divmod(k, _PAIR_SHIFT)
        merged = self.token_bytes[a] + self.token_bytes[b]
        c = self.token_index.get(merged)
        if c is None:
            c = len(self.token_bytes)
            self.token_bytes.append(merged)
            self.token_index[merged] = c
        words, freqs, groups, where = self.words, self.freqs, self.groups, self.where
        shift = _PAIR_SHIFT
        touched: list[set[int]] = [set() for _ in self.counts]
        for i in self._types_with(k):
            w = words[i]
            try:
                j = w.index(a)
            except ValueError:
                continue  # stale index entry
            n = len(w)
            f = freqs[i]
            g = groups[i]
            cnt = self.counts[g]
            t = touched[g]
            new = w[:j]
            hit = False
            while j < n:
                if w[j] == a and j + 1 < n and w[j + 1] == b:
                    hit = True
                    # Left neighbour as merged so far (handles runs like a b a b), right neighbour as before.
                    if new:
                        left = new[-1]
                        kk = left * shift + a
                        cnt[kk] -= f
                        t.add(kk)
                        kk = left * shift + c
                        cnt[kk] = cnt.get(kk, 0) + f
                        t.add(kk)
                        lst = where.get(kk)
                        if lst is None:
                            where[kk] = [i]
                        elif lst[-1] != i:
                            lst.append(i)
                    if j + 2 < n:
                        right = w[j + 2]
                        kk = b * shift + right
                        cnt[kk] -= f
                        t.add(kk)
                        kk = c * shift + right
                        cnt[kk] = cnt.get(kk, 0) + f
                        t.add(kk)
                        lst = where.get(kk)
                        if lst is None:
                            where[kk] = [i]
                        elif lst[-1] != i:
                            lst.append(i)
                    cnt[k] -= f
                    new.append(c)
                    j += 2
                else:
                    new.append(w[j])
                    j += 1
            if hit:
                words[i] = new
                t.add(k)
        for g, t in enumerate(touched):
            cnt, heap = self.counts[g], self.heaps[g]
            for kk in t:
                n = cnt.get(kk, 0)
                if n > 0:
                    heapq.heappush(heap, (-n, kk))
                else:
                    cnt.pop(kk, None)
        return c


def _choose_group(done: list[int], weights: list[float], active: list[bool]) -> int | None:
    """The active group furthest behind its share (ties: larger share first, then lower index)."""
    best, best_key = None, None
    for g, w in enumerate(weights):
        if not active[g] or w <= 0:
            continue
        key = (done[g] / w, -w, g)
        if best_key is None or key < best_key:
            best, best_key = g, key
    return best


def _count_pretokens(documents, group_names, nfc, workers, show_progress) -> tuple[Counter, dict[str, int]]:
    """Stage-2 pre-token types with their frequency per language group (multiprocessing), and bytes per language."""
    from tqdm.auto import tqdm

    counts: Counter = Counter()
    lang_bytes: Counter = Counter()
    tasks = ((batch, group_names, nfc) for batch in _batches(documents))
    bar = tqdm(desc="count stage-2 pre-tokens", unit="MB", disable=not show_progress)
    if workers > 1:
        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            for c, lb in pool.imap(_count_batch, tasks, chunksize=1):
                counts.update(c)
                lang_bytes.update(lb)
                bar.update(sum(lb.values()) / 1e6)
    else:
        for task in tasks:
            c, lb = _count_batch(task)
            counts.update(c)
            lang_bytes.update(lb)
            bar.update(sum(lb.values()) / 1e6)
    bar.close()
    return counts, dict(sorted(lang_bytes.items()))


def _replay_stage1(counts: Counter, group_names, token_bytes, merges, n_special):
    """Replay the stage-1 merges on every stage-2 type -> (words as id lists, frequencies, group indices)."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    keys = sorted(counts)  # fixed order: results never depend on process scheduling or hashing
    unique = sorted({piece for piece, _ in keys})
    s1_vocab = {pretokenize.bytes_to_token(tb): i for i, tb in enumerate(token_bytes) if i >= n_special}
    s1_names = {i: name for name, i in s1_vocab.items()}
    # A Rust BPE model holding exactly the stage-1 merges applies them by rank, i.e. replays them in order.
    s1 = Tokenizer(models.BPE(vocab=s1_vocab, merges=[(s1_names[a], s1_names[b]) for a, b in merges]))
    s1.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    # Stage-1 tokens never hold a non-space followed by a space, so no stage-1 merge crosses the start of a word
    # inside a stage-2 pre-token: replaying the merges on the whole pre-token equals replaying them word by word.
    # Segmenting the (far fewer, shorter) distinct words is much cheaper; a test checks the equivalence.
    split = pretokenize.STAGE1_RE.findall
    pieces_of = {piece: split(piece) for piece in unique}
    words1 = sorted({w for ws in pieces_of.values() for w in ws})
    seg1 = dict(zip(words1, (e.ids for e in s1.encode_batch_fast(words1, add_special_tokens=False))))
    group_index = {name: g for g, name in enumerate(group_names)}
    words, freqs, groups = [], [], []
    for piece, group in keys:
        ids = [i for w in pieces_of[piece] for i in seg1[w]]
        if len(ids) > 1:  # a single token can never take part in a merge
            words.append(ids)
            freqs.append(counts[(piece, group)])
            groups.append(group_index[group])
    return words, freqs, groups


def _run_stage2(engine: _Stage2, merges: list[tuple[int, int]], weights: list[float], vocab_size: int,
                show_progress: bool) -> list[int]:
    """Merge until the vocabulary has `vocab_size` ids, giving each group its share; returns merges per group."""
    from tqdm.auto import tqdm

    token_bytes = engine.token_bytes
    done = [0] * len(weights)
    active = [w > 0 for w in weights]
    if not any(active):
        active = [True] * len(weights)
        weights = [1.0] * len(weights)
    bar = tqdm(total=vocab_size - len(token_bytes), desc="stage-2 merges", disable=not show_progress)
    while len(token_bytes) < vocab_size:
        g = _choose_group(done, weights, active)
        if g is None:
            break  # every group ran out of admissible pairs: the vocabulary stays smaller
        k = engine.best(g)
        if k is None:
            active[g] = False
            continue
        before = len(token_bytes)
        engine.merge(k)
        merges.append(divmod(k, _PAIR_SHIFT))
        done[g] += 1
        bar.update(len(token_bytes) - before)
    bar.close()
    return done


# ---------------------------------------------------------------------------------------------------------------
# public API


def resolve_transition(vocab_size: int, num_special: int, transition: int | None,
                       superword_fraction: float | None) -> int:
    """The stage-1 vocabulary size t (specials and the 256 bytes included) from either option."""
    floor = num_special + 256
    if vocab_size <= floor:
        raise ValueError(f"vocab_size {vocab_size} must exceed specials + 256 bytes = {floor}")
    if transition is not None and superword_fraction is not None:
        raise ValueError("give either transition or superword_fraction, not both")
    if transition is None:
        fraction = 0.2 if superword_fraction is None else float(superword_fraction)
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"superword_fraction {fraction} must be in [0, 1)")
        transition = max(floor, vocab_size - round(fraction * vocab_size))
    if not floor <= transition <= vocab_size:
        raise ValueError(f"transition {transition} must be between {floor} (specials + bytes) and {vocab_size}")
    return int(transition)


def _check_allocation(allocation: dict[str, float] | None) -> dict[str, float]:
    allocation = dict(DEFAULT_ALLOCATION if allocation is None else allocation)
    for name, w in allocation.items():
        if name not in pretokenize.LANGUAGES or not w >= 0:
            raise ValueError(f"allocation {name}={w}: groups must be in {pretokenize.LANGUAGES} with weight >= 0")
    allocation.setdefault("other", 0.0 if allocation else 1.0)
    return allocation


def _resolve_nonempty(files_or_texts, text_field: str) -> TrainingInputs:
    inputs = resolve_inputs(files_or_texts, text_field)
    if not inputs.files and not inputs.texts:
        raise ValueError("no training input: give files, directories, globs or texts")
    return inputs


def learn_stage1(files_or_texts, num_learned: int, *, nfc: bool = True, sample_fraction: float = 1.0,
                 seed: int = 0, show_progress: bool = True, text_field: str = "text") -> list[tuple[str, str]]:
    """Stage 1 alone: `num_learned` byte-level BPE merges (byte-level strings, rank order). The sequence does not
    depend on `num_learned` (greedy), so one long run serves every shorter transition as a prefix."""
    docs = iter_training_texts(_resolve_nonempty(files_or_texts, text_field), sample_fraction, seed)
    # Texts are normalised here exactly as the final tokenizer's NFC normalizer will do.
    return _stage1_merges((pretokenize.normalize(x, nfc) for x, _ in docs), num_learned, show_progress)


def count_pretokens(files_or_texts, allocation: dict[str, float] | None = None, *, nfc: bool = True,
                    workers: int | None = None, sample_fraction: float = 1.0, seed: int = 0,
                    show_progress: bool = True, text_field: str = "text") -> tuple[Counter, dict[str, int]]:
    """Stage-2 pre-token types counted per language group of `allocation`, and bytes per detected language."""
    group_names = tuple(sorted(_check_allocation(allocation)))
    docs = iter_training_texts(_resolve_nonempty(files_or_texts, text_field), sample_fraction, seed)
    workers = max(1, min(4, os.cpu_count() or 1) if workers is None else int(workers))
    return _count_pretokens(docs, group_names, nfc, workers, show_progress)


def build_superbpe(
    stage1: list[tuple[str, str]],
    counts: Counter | None,
    vocab_size: int,
    *,
    transition: int | None = None,
    superword_fraction: float | None = None,
    allocation: dict[str, float] | None = None,
    max_words: int = 4,
    nfc: bool = True,
    special_tokens: list[str] | None = None,
    show_progress: bool = True,
    model_max_length: int | None = None,
) -> KExaoneTokenizer:
    """Stage 2 from parts: the first t - specials - 256 merges of `stage1` (from `learn_stage1`) are replayed on
    `counts` (from `count_pretokens` with the same allocation) and merging continues to `vocab_size`. `counts`
    may be None for plain BPE (transition == vocab_size). `tok.train_stats` describes the result."""
    specials = special_tokens_with(special_tokens)
    n_special = len(specials)
    t = resolve_transition(vocab_size, n_special, transition, superword_fraction)
    if max_words < 1:
        raise ValueError(f"max_words {max_words} must be at least 1")
    allocation = _check_allocation(allocation)
    group_names = tuple(sorted(allocation))

    # Ids: specials, then the 256 bytes in byte order, then merges in rank order.
    token_bytes: list[bytes] = [b""] * n_special + [bytes([i]) for i in range(256)]
    index: dict[bytes, int] = {tb: i for i, tb in enumerate(token_bytes) if tb}
    merges: list[tuple[int, int]] = []
    for left, right in stage1[: t - n_special - 256]:
        a, b = index[pretokenize.token_to_bytes(left)], index[pretokenize.token_to_bytes(right)]
        merged = token_bytes[a] + token_bytes[b]
        if merged not in index:
            index[merged] = len(token_bytes)
            token_bytes.append(merged)
        merges.append((a, b))
    stage1_count = len(merges)
    stage1_vocab = len(token_bytes)

    refused, done, n_types, seconds = 0, [0] * len(group_names), 0, 0.0
    if t < vocab_size:
        if counts is None:
            raise ValueError(f"transition {t} < vocab_size {vocab_size} needs stage-2 pre-token counts")
        unknown = {g for _, g in counts} - set(group_names)
        if unknown:
            raise ValueError(f"counts hold groups {sorted(unknown)} that the allocation {allocation} lacks")
        t0 = time.perf_counter()
        words, freqs, groups = _replay_stage1(counts, group_names, token_bytes, merges, n_special)
        n_types = len(words)
        engine = _Stage2(words, freqs, groups, len(group_names), token_bytes, max_words)
        done = _run_stage2(engine, merges, [float(allocation[name]) for name in group_names], vocab_size,
                           show_progress)
        refused = len(engine.refused)
        del engine, words, freqs, groups
        seconds = time.perf_counter() - t0

    kwargs = {} if model_max_length is None else {"model_max_length": model_max_length}
    # Plain BPE (no stage 2) keeps the stage-1 pre-tokenizer; SuperBPE needs the stage-2 one to reproduce its merges.
    pattern = pretokenize.STAGE2_PATTERN if t < vocab_size else pretokenize.STAGE1_PATTERN
    tok = KExaoneTokenizer.from_merges(token_bytes, merges, specials, nfc=nfc, pattern=pattern, **kwargs)
    tok.train_stats = TrainStats(
        vocab_size=len(token_bytes),
        transition=stage1_vocab,
        transition_requested=t,
        num_special=n_special,
        stage1_merges=stage1_count,
        stage2_merges=len(merges) - stage1_count,
        stage2_refused_pairs=refused,
        stage2_merges_per_group={name: done[g] for g, name in enumerate(group_names)},
        allocation={name: float(allocation[name]) for name in group_names},
        bytes_per_language={},
        pretoken_types=n_types,
        seconds_stage1=0.0,
        seconds_count=0.0,
        seconds_stage2=round(seconds, 3),
        settings={"max_words": max_words, "nfc": nfc, "stage2_pattern": pretokenize.STAGE2_PATTERN,
                  "stage1_pattern": pretokenize.STAGE1_PATTERN},
    )
    return tok


def train_superbpe(
    files_or_texts,
    vocab_size: int,
    out_dir: str | os.PathLike | None = None,
    *,
    transition: int | None = None,
    superword_fraction: float | None = None,
    allocation: dict[str, float] | None = None,
    max_words: int = 4,
    nfc: bool = True,
    special_tokens: list[str] | None = None,
    workers: int | None = None,
    sample_fraction: float = 1.0,
    seed: int = 0,
    show_progress: bool = True,
    model_max_length: int | None = None,
    text_field: str = "text",
) -> KExaoneTokenizer:
    """Train a SuperBPE tokenizer of `vocab_size` ids (specials included) and optionally save it to `out_dir`.

    files_or_texts: document sources and/or inline texts (see `resolve_inputs`; sources are read by
    `kexaone.data.sources`, JSONL/Parquet/`datasets` records through their `text_field`). transition: stage-1
    vocabulary size t (default: from superword_fraction, 0.2 = the last 20% of the vocabulary is learned in
    stage 2; transition == vocab_size gives plain BPE). allocation: stage-2 share per language group (default
    en:ko:other = 2:3:1; groups are "other" plus the languages named; `{}` = one shared budget). special_tokens:
    extras after the standard ones. workers: processes for counting (default min(4, cpus)). sample_fraction/seed:
    train on a seeded random subset of the documents. Deterministic for fixed inputs and settings.
    `tok.train_stats` says what happened (also saved as `superbpe_training.json`)."""
    specials = special_tokens_with(special_tokens)
    t = resolve_transition(vocab_size, len(specials), transition, superword_fraction)
    if not 0.0 < sample_fraction <= 1.0:
        raise ValueError(f"sample_fraction {sample_fraction} must be in (0, 1]")
    allocation = _check_allocation(allocation)
    inputs = resolve_inputs(files_or_texts, text_field)  # validated before any work; read twice below
    common = dict(nfc=nfc, sample_fraction=sample_fraction, seed=seed, show_progress=show_progress)

    # Counting first: its worker processes are forked before the Rust trainer starts threads in this process.
    counts, lang_bytes, seconds_count = None, {}, 0.0
    if t < vocab_size:
        t0 = time.perf_counter()
        counts, lang_bytes = count_pretokens(inputs, allocation, workers=workers, **common)
        seconds_count = time.perf_counter() - t0
    t0 = time.perf_counter()
    stage1 = learn_stage1(inputs, t - len(specials) - 256, **common)
    seconds_stage1 = time.perf_counter() - t0
    tok = build_superbpe(stage1, counts, vocab_size, transition=t, allocation=allocation, max_words=max_words,
                         nfc=nfc, special_tokens=special_tokens, show_progress=show_progress,
                         model_max_length=model_max_length)
    stats = tok.train_stats
    stats.bytes_per_language = lang_bytes
    stats.seconds_stage1 = round(seconds_stage1, 3)
    stats.seconds_count = round(seconds_count, 3)
    stats.settings.update(sample_fraction=sample_fraction, seed=seed)
    if out_dir is not None:
        save_with_stats(tok, out_dir, stats)
    return tok


def save_with_stats(tok: KExaoneTokenizer, out_dir: str | os.PathLike, stats: TrainStats) -> Path:
    """Save the tokenizer and `superbpe_training.json` (the TrainStats) into out_dir."""
    from kexaone.utils.io import atomic_write_text

    out = tok.save(out_dir)
    atomic_write_text(out / "superbpe_training.json", json.dumps(asdict(stats), ensure_ascii=False, indent=2) + "\n")
    return out
