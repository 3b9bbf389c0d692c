"""The embedded SFT set: chat conversations generated from the synthetic world in the six languages, with a held-out
split, in the OpenAI / TRL `messages` format that `kexaone sft` reads.

Categories (SPEC section 5's SFT domains at toy scale):
- chat: greeting, repeat a phrase, upper-case a word, sort words, count (answers that follow from the prompt);
- reasoning: arithmetic and multi-step word problems with worked column-by-column steps (the pre-training
  arithmetic generator, so held-out keys stay held out);
- recall: questions about world facts, never in a fact's held-out language on the training side;
- docqa: a short document about an invented person, then a question whose answer must be read from it;
- translation: a world-fact sentence from one language into another (the same phrasing variant);
- code: small Python functions with unit tests (the reference carries the tests, for the sandboxed reward);
- tools: declared tools, a call, its result, the final answer (the pre-training tool dialogues);
- safety: refusals of harmful requests and help for benign look-alikes.

Every example has a reasoning trace. `example.record(thinking)` renders the reasoning form (`reasoning_content` on
assistant turns) or the non-reasoning form (no reasoning: the template writes the empty think block); training
draws the mode per example (`REASONING_SHARE`, the report's ~1.5:1), evaluation asks each held-out prompt in both.

Held out by construction: an example's `key` (its content identity, e.g. the arithmetic key or the fact and
language) is hashed; one key in `HELDOUT_MOD` goes to the held-out split and never to training. Arithmetic uses
its own reserved keys (kexaone.data.synthetic.arithmetic) so the speedrun's base arithmetic task stays unseen too.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from kexaone.data.synthetic import arithmetic, tools
from kexaone.data.synthetic.chat_strings import (BENIGN, CODE_FUNCS, CODE_Q, COUNT_Q, DOC_FIELDS, DOC_INTRO,
                                                 GREETING_A, GREETING_Q, HARMFUL, LANG_NAMES, REFUSAL, REPEAT_Q,
                                                 SORT_Q, TRANSLATE_Q, UPPER_Q)
from kexaone.data.synthetic.languages import LANGS
from kexaone.data.synthetic.names import pseudo_word
from kexaone.data.synthetic.world import World

CATEGORIES = ("chat", "reasoning", "recall", "docqa", "translation", "code", "tools", "safety")
HELDOUT_MOD = 8
REASONING_SHARE = 0.6


@dataclass(frozen=True)
class ChatExample:
    """One conversation. `messages` end with the assistant turn(s) to learn; `reference` says what a correct reply
    holds: {"answer": str} (contained in the final answer), {"target": str} (translation, scored by chrF),
    {"tests": [{"call", "expected"}], "entry": name} (code), {"tool_call": {"name", "arguments"}} (first reply),
    or {"refuse": bool} (safety)."""

    id: str
    category: str
    lang: str
    key: str
    messages: list[dict]
    reference: dict
    tools: list[dict] | None = None
    heldout: bool = False

    def record(self, thinking: bool) -> dict:
        """The example as a JSON-able `messages` record in reasoning (`thinking=True`) or non-reasoning form."""
        msgs = [dict(m) for m in self.messages]
        if not thinking:
            for m in msgs:
                m.pop("reasoning_content", None)
        rec = {"id": self.id, "category": self.category, "lang": self.lang, "messages": msgs,
               "enable_thinking": thinking, "reference": self.reference}
        if self.tools:
            rec["tools"] = self.tools
        return rec

    def prompt_messages(self) -> list[dict]:
        """The conversation up to (not including) the first assistant turn: what evaluation asks."""
        first = next(i for i, m in enumerate(self.messages) if m["role"] == "assistant")
        return [dict(m) for m in self.messages[:first]]


def is_heldout_key(key: str) -> bool:
    return int(hashlib.sha256(f"sft|{key}".encode()).hexdigest()[:8], 16) % HELDOUT_MOD == 0


def _exchange(question: str, answer: str, reasoning: str, system: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}] if system else []
    return msgs + [{"role": "user", "content": question},
                   {"role": "assistant", "content": answer, "reasoning_content": reasoning}]


# ------------------------------------------------------------------------------------------- categories
def _chat(rng: random.Random, lang: str) -> tuple[str, list[dict], dict]:
    kind = rng.choice(("greet", "repeat", "upper", "sort", "count"))
    if kind == "greet":
        i = rng.randrange(2)
        q, a = GREETING_Q[lang][i], GREETING_A[lang]
        return f"greet|{lang}|{i}", _exchange(q, a, "The user greets me and asks what I am. I introduce myself "
                                               "in the user's language."), {"answer": "K-EXAONE"}
    if kind == "repeat":
        x = " ".join(pseudo_word(rng, rng.randint(1, 3)).lower() for _ in range(rng.randint(2, 5)))
        return f"repeat|{x}", _exchange(REPEAT_Q[lang].format(x=x), x, f"I copy the phrase exactly: {x}"), {"answer": x}
    if kind == "upper":
        x = pseudo_word(rng, rng.randint(2, 3)).lower()
        return (f"upper|{x}", _exchange(UPPER_Q[lang].format(x=x), x.upper(), f"{x} in capitals is {x.upper()}."),
                {"answer": x.upper()})
    if kind == "sort":
        words = sorted({pseudo_word(rng, 2).lower() for _ in range(rng.randint(3, 5))}, key=lambda w: rng.random())
        out = ", ".join(sorted(words))
        steps = "Alphabetical order by first letters: " + " < ".join(sorted(words)) + "."
        return f"sort|{','.join(sorted(words))}", _exchange(SORT_Q[lang].format(x=", ".join(words)), out, steps), \
            {"answer": out}
    a = rng.randint(1, 20)
    b = a + rng.randint(2, 6)
    out = ", ".join(str(i) for i in range(a, b + 1))
    return f"count|{a}|{b}", _exchange(COUNT_Q[lang].format(a=a, b=b), out, f"From {a} up to {b} one by one."), \
        {"answer": out}


def _reasoning(rng: random.Random, lang: str, heldout: bool) -> tuple[str, list[dict], dict]:
    while True:
        p = arithmetic.make_problem(rng.choice(arithmetic.KINDS), rng, lang)
        if arithmetic.is_reserved(p.key) == heldout:
            return p.key, arithmetic.messages(p), {"answer": p.answer}


def _recall(world: World, rng: random.Random, lang: str) -> tuple[str, list[dict], dict] | None:
    fact = rng.choice(world.facts)
    if not fact.allowed(lang):
        return None
    a = fact.answer(lang)
    why = f"I recall the fact about {fact.subject}: {fact.statement('en', 0) if fact.allowed('en') else a}"
    return f"recall|{fact.relation}|{fact.subject}|{lang}", _exchange(fact.question(lang), a, why), {"answer": a}


def _docqa(rng: random.Random, lang: str) -> tuple[str, list[dict], dict]:
    person = f"{pseudo_word(rng, rng.randint(1, 2))} {pseudo_word(rng, 2)}"
    values = {"city": pseudo_word(rng, 3), "pet": pseudo_word(rng, 2), "code": str(rng.randint(1000, 9999))}
    order = list(values)
    rng.shuffle(order)
    doc = " ".join(DOC_FIELDS[f][lang][0].format(s=person, o=values[f]) for f in order)
    asked = rng.choice(order)
    q = f"{DOC_INTRO[lang]}\n\n{doc}\n\n{DOC_FIELDS[asked][lang][1].format(s=person)}"
    a = values[asked]
    why = f"The document says: {DOC_FIELDS[asked][lang][0].format(s=person, o=a)} So the answer is {a}."
    return f"docqa|{person}|{asked}", _exchange(q, a, why), {"answer": a}


def _translation(world: World, rng: random.Random, lang: str) -> tuple[str, list[dict], dict] | None:
    fact = rng.choice(world.facts)
    src = rng.choice([x for x in LANGS if x != lang])
    if not (fact.allowed(lang) and fact.allowed(src)):
        return None
    v = rng.randrange(3)
    source, target = fact.statement(src, v), fact.statement(lang, v)
    # The instruction is in the target language (the user's language), the text in the source language.
    q = TRANSLATE_Q[lang].format(t=LANG_NAMES[lang][lang], x=source)
    why = f"I translate the sentence about {fact.subject} into the requested language, keeping the names."
    return f"translate|{fact.relation}|{fact.subject}|{src}|{lang}|{v}", _exchange(q, target, why), {"target": target}


def _code(rng: random.Random, lang: str) -> tuple[str, list[dict], dict]:
    name = rng.choice(sorted(CODE_FUNCS))
    args, body, en, ko, ja, es, de, vi, inputs = CODE_FUNCS[name]
    fname = f"{name}_{pseudo_word(rng, 1).lower()}"
    q = CODE_Q[lang].format(f=fname, args=args, what=en, what_ko=ko, what_ja=ja, what_es=es, what_de=de, what_vi=vi)
    code = f"def {fname}({args}):\n    return {body}"
    answer = f"```python\n{code}\n```"
    ns: dict = {}
    exec(compile(code, "<sft-reference>", "exec"), ns)  # our own reference solution, to compute expected outputs
    tests = [{"call": f"{fname}({', '.join(repr(x) for x in inp)})", "expected": repr(ns[fname](*inp))}
             for inp in inputs]
    why = f"The function should return {body} for the arguments ({args})."
    return f"code|{fname}|{lang}", _exchange(q, answer, why), {"tests": tests, "entry": fname}


def _tools(world: World, rng: random.Random, lang: str) -> tuple[str, list[dict], dict, list[dict]]:
    msgs, decl = tools.make_dialogue(rng, [c.name for c in world.cities], lang)
    call = next(m for m in msgs if m["role"] == "assistant")["tool_calls"][0]["function"]
    key = f"tools|{call['name']}|{json.dumps(call['arguments'], sort_keys=True)}|{lang}"
    return key, msgs, {"tool_call": {"name": call["name"], "arguments": call["arguments"]}}, decl


def _safety(rng: random.Random, lang: str) -> tuple[str, list[dict], dict]:
    if rng.random() < 0.5:
        i = rng.randrange(len(HARMFUL[lang]))
        why = "This request asks for help hurting people or breaking the law. I must refuse and point to help."
        return f"harmful|{lang}|{i}", _exchange(HARMFUL[lang][i], REFUSAL[lang], why), {"refuse": True}
    i = rng.randrange(len(BENIGN[lang]))
    q, a = BENIGN[lang][i]
    why = "This sounds sensitive but is a safe, everyday question. I answer it helpfully."
    return f"benign|{lang}|{i}", _exchange(q, a, why), {"refuse": False}


# ------------------------------------------------------------------------------------------- the set
def iter_examples(world: World, seed: int = 0, heldout: bool = False) -> Iterator[ChatExample]:
    """Endless examples of one split, categories in rotation, languages drawn uniformly; deterministic per seed.
    Safety and chat-greeting keys are few (fixed request lists), so their held-out split is a fixed set of
    requests that training never sees."""
    rng = random.Random(f"kexaone-sft|{seed}|{heldout}")
    n = 0
    while True:
        for category in CATEGORIES:
            lang = rng.choice(LANGS)
            decl = None
            if category == "chat":
                made = _chat(rng, lang)
            elif category == "reasoning":
                made = _reasoning(rng, lang, heldout)
            elif category == "recall":
                made = _recall(world, rng, lang)
            elif category == "docqa":
                made = _docqa(rng, lang)
            elif category == "translation":
                made = _translation(world, rng, lang)
            elif category == "code":
                made = _code(rng, lang)
            elif category == "tools":
                *made, decl = _tools(world, rng, lang)
            else:
                made = _safety(rng, lang)
            if made is None:
                continue
            key, msgs, ref = made
            # Arithmetic decides its split by its own reserved keys; everything else by the key's hash.
            if category != "reasoning" and is_heldout_key(key) != heldout:
                continue
            n += 1
            yield ChatExample(f"{'heldout' if heldout else 'train'}-{category}-{n}", category, lang, key, msgs,
                              ref, decl, heldout)


def build_split(world: World, n: int, seed: int = 0, heldout: bool = False, unique: bool = True) -> list[ChatExample]:
    """`n` examples of one split, balanced over categories (n // 8 each, the rest to the first ones). With
    `unique`, no key repeats (held-out sets must not count one item twice); categories with few distinct keys
    (safety, greetings) then stop early rather than loop forever."""
    per = {c: n // len(CATEGORIES) + (1 if i < n % len(CATEGORIES) else 0) for i, c in enumerate(CATEGORIES)}
    out: list[ChatExample] = []
    seen: set[str] = set()
    misses = {c: 0 for c in CATEGORIES}
    for ex in iter_examples(world, seed, heldout):
        if per[ex.category] <= 0:
            if all(v <= 0 for v in per.values()):
                break
            continue
        if unique and ex.key in seen:
            misses[ex.category] += 1
            if misses[ex.category] > 200:  # this category has no unseen key left: take what it has
                per[ex.category] = 0
            if all(v <= 0 for v in per.values()):
                break
            continue
        seen.add(ex.key)
        out.append(ex)
        per[ex.category] -= 1
        if all(v <= 0 for v in per.values()):
            break
    return out


@dataclass
class ChatSet:
    train: list[ChatExample]
    heldout: list[ChatExample]
    stats: dict = field(default_factory=dict)


def build_chat_set(n_train: int = 4000, n_heldout: int = 160, seed: int = 0, world_size: str = "default",
                   world_seed: int = 0) -> ChatSet:
    """The default SFT set. Training examples may repeat a key (as any real mixture repeats patterns); held-out
    ones are unique and disjoint from training by key."""
    world = World(world_seed, world_size)
    train = build_split(world, n_train, seed, heldout=False, unique=False)
    held = build_split(world, n_heldout, seed, heldout=True, unique=True)
    train_keys = {e.key for e in train}
    overlap = [e.key for e in held if e.key in train_keys]
    assert not overlap, f"held-out keys leaked into training: {overlap[:3]}"
    stats = {"train": _counts(train), "heldout": _counts(held)}
    return ChatSet(train, held, stats)


def _counts(examples: list[ChatExample]) -> dict[str, int]:
    out: dict[str, int] = {}
    for e in examples:
        out[e.category] = out.get(e.category, 0) + 1
    return out


def chat_set_texts(chat_set: ChatSet, seed: int = 0) -> dict[str, str]:
    """The JSONL text of train.jsonl (each example in the mode drawn for it) and heldout.jsonl (each example in
    both modes)."""
    rng = random.Random(f"kexaone-sft-mode|{seed}")
    train = [json.dumps(e.record(rng.random() < REASONING_SHARE), ensure_ascii=False) for e in chat_set.train]
    held = [json.dumps(e.record(t), ensure_ascii=False) for e in chat_set.heldout for t in (True, False)]
    return {"train": "\n".join(train) + "\n", "heldout": "\n".join(held) + "\n"}


def write_chat_set(out_dir: str | Path, chat_set: ChatSet, seed: int = 0,
                   texts: dict[str, str] | None = None) -> dict[str, Path]:
    """train.jsonl and heldout.jsonl (`chat_set_texts`, or `texts` when already made), written atomically;
    returns their paths."""
    from kexaone.utils.io import atomic_write_text

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    texts = texts or chat_set_texts(chat_set, seed)
    paths = {"train": out_dir / "train.jsonl", "heldout": out_dir / "heldout.jsonl"}
    for name, path in paths.items():
        atomic_write_text(path, texts[name])
    return paths
