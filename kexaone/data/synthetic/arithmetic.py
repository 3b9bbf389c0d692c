"""Arithmetic and comparison problems with step-by-step reasoning ("thinking-augmented" data), in chat format.

Each problem is one user turn (in one of the six languages) and one assistant turn whose reasoning works column by
column (carries and borrows spelled out) inside `<think>...</think>`, then the bare answer. About a fifth are
rendered in non-reasoning mode (the empty think block), so the model learns both modes of SPEC section 2.

Held out by construction: a problem is identified by its canonical key ("add|347|285"); keys whose hash falls in
a reserved tenth of the hash space (`is_reserved`) are never generated for training, and the evaluation task draws
only from them (the word-problem form shares the key of its underlying operation, so neither form leaks).

Rendering uses kexaone.tokenizer.chat.render, the project's one implementation of the chat format.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from dataclasses import dataclass

from kexaone.data.sources import Document
from kexaone.data.synthetic.languages import LANGS
from kexaone.data.synthetic.names import pseudo_word

DOMAIN = "arithmetic"
RESERVED_MOD = 10  # 1 key in 10 is reserved for evaluation
KINDS = ("add", "sub", "mul", "cmp", "word_add", "word_sub", "two_step")

QUESTION = {
    "op": {"en": "What is {e}?", "ko": "{e}는 얼마입니까?", "ja": "{e}はいくつですか？", "es": "¿Cuánto es {e}?",
           "de": "Was ist {e}?", "vi": "{e} bằng bao nhiêu?"},
    "cmp": {"en": "Which is larger, {a} or {b}?", "ko": "{a}, {b} 중 더 큰 수는 무엇입니까?",
            "ja": "{a}と{b}ではどちらが大きいですか？", "es": "¿Cuál es mayor, {a} o {b}?",
            "de": "Welche Zahl ist größer, {a} oder {b}?", "vi": "Số nào lớn hơn, {a} hay {b}?"},
    "word_add": {
        "en": "{n} has {a} coins and receives {b} more. How many coins does {n} have now?",
        "ko": "{n} 씨는 동전 {a}개를 가지고 있고 {b}개를 더 받았습니다. 이제 동전은 몇 개입니까?",
        "ja": "{n}さんはコインを{a}枚持っていて、さらに{b}枚もらいました。コインは全部で何枚ですか？",
        "es": "{n} tiene {a} monedas y recibe {b} más. ¿Cuántas monedas tiene ahora?",
        "de": "{n} hat {a} Münzen und bekommt {b} dazu. Wie viele Münzen hat {n} jetzt?",
        "vi": "{n} có {a} đồng xu và nhận thêm {b} đồng. Bây giờ {n} có bao nhiêu đồng xu?",
    },
    "word_sub": {
        "en": "{n} has {a} coins and gives away {b}. How many coins are left?",
        "ko": "{n} 씨는 동전 {a}개를 가지고 있고 {b}개를 주었습니다. 남은 동전은 몇 개입니까?",
        "ja": "{n}さんはコインを{a}枚持っていて、{b}枚あげました。残りは何枚ですか？",
        "es": "{n} tiene {a} monedas y regala {b}. ¿Cuántas monedas le quedan?",
        "de": "{n} hat {a} Münzen und verschenkt {b}. Wie viele Münzen bleiben übrig?",
        "vi": "{n} có {a} đồng xu và cho đi {b} đồng. {n} còn lại bao nhiêu đồng xu?",
    },
}


@dataclass(frozen=True)
class Problem:
    key: str  # canonical identity, e.g. "add|347|285" (what is_reserved looks at)
    question: str
    reasoning: str
    answer: str
    lang: str


def is_reserved(key: str) -> bool:
    """True for the problems kept for evaluation (a fixed tenth of all keys)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") % RESERVED_MOD == 0


def _digits(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def add_steps(a: int, b: int) -> list[str]:
    da, db = _digits(a), _digits(b)
    steps, carry = [], 0
    for i in range(max(len(da), len(db))):
        x, y = (da[i] if i < len(da) else 0), (db[i] if i < len(db) else 0)
        s = x + y + carry
        lhs = f"{x} + {y}" + (f" + {carry}" if carry else "")
        carry = s // 10
        last = i == max(len(da), len(db)) - 1
        if last:
            steps.append(f"{lhs} = {s}, write {s}")
        else:
            steps.append(f"{lhs} = {s}, write {s % 10}" + (f", carry {carry}" if carry else ""))
    steps.append(f"So {a} + {b} = {a + b}.")
    return steps


def sub_steps(a: int, b: int) -> list[str]:
    assert a >= b
    da, db = _digits(a), _digits(b)
    steps, borrow = [], 0
    for i in range(len(da)):
        x, y = da[i], (db[i] if i < len(db) else 0)
        top = x - borrow
        lhs = f"{x} - {borrow}" if borrow else f"{x}"
        if top < y:
            steps.append(f"{lhs} < {y}, borrow: {top + 10} - {y} = {top + 10 - y}")
            borrow = 1
        else:
            steps.append(f"{lhs} - {y} = {top - y}" if not borrow else f"{lhs} = {top}, {top} - {y} = {top - y}")
            borrow = 0
    steps.append(f"So {a} - {b} = {a - b}.")
    return steps


def mul_steps(a: int, d: int) -> list[str]:
    da = _digits(a)
    steps, carry = [], 0
    for i, x in enumerate(da):
        p = x * d + carry
        lhs = f"{x} × {d}" + (f" + {carry}" if carry else "")
        if i == len(da) - 1:
            steps.append(f"{lhs} = {p}, write {p}")
        else:
            steps.append(f"{lhs} = {p}, write {p % 10}" + (f", carry {p // 10}" if p >= 10 else ""))
        carry = p // 10
    steps.append(f"So {a} × {d} = {a * d}.")
    return steps


def cmp_steps(a: int, b: int) -> list[str]:
    sa, sb = str(a), str(b)
    if len(sa) != len(sb):
        big = a if len(sa) > len(sb) else b
        def n(x: str) -> str:
            return f"{len(x)} digit" + ("s" if len(x) > 1 else "")

        return [f"{sa} has {n(sa)} and {sb} has {n(sb)}.", f"So {big} is larger."]
    for i, (x, y) in enumerate(zip(sa, sb)):
        if x != y:
            big = a if x > y else b
            rel = ">" if x > y else "<"
            return [f"Same number of digits. Compare digit {i + 1}: {x} {rel} {y}.", f"So {big} is larger."]
    raise AssertionError("cmp_steps needs two different numbers")


def _number(rng: random.Random) -> int:
    """Mostly two-digit operands, some one- and three-digit: the column method is the same at every length, and
    short problems are what a small model trained for minutes can learn to carry out (tokens are single digits)."""
    r = rng.random()
    return rng.randint(10, 99) if r < 0.65 else rng.randint(1, 9) if r < 0.85 else rng.randint(100, 999)


def make_problem(kind: str, rng: random.Random, lang: str) -> Problem:
    """One random problem of `kind` (any key, reserved or not)."""
    a, b = _number(rng), _number(rng)
    if kind in ("sub", "word_sub") and a < b:
        a, b = b, a
    if kind == "add":
        e = f"{a} + {b}"
        return Problem(f"add|{a}|{b}", QUESTION["op"][lang].format(e=e), "\n".join([e, *add_steps(a, b)]),
                       str(a + b), lang)
    if kind == "sub":
        e = f"{a} - {b}"
        return Problem(f"sub|{a}|{b}", QUESTION["op"][lang].format(e=e), "\n".join([e, *sub_steps(a, b)]),
                       str(a - b), lang)
    if kind == "mul":
        a, d = rng.randint(10, 99), rng.randint(2, 9)
        e = f"{a} × {d}"
        return Problem(f"mul|{a}|{d}", QUESTION["op"][lang].format(e=e), "\n".join([e, *mul_steps(a, d)]),
                       str(a * d), lang)
    if kind == "cmp":
        while b == a:
            b = _number(rng)
        return Problem(f"cmp|{a}|{b}", QUESTION["cmp"][lang].format(a=a, b=b),
                       "\n".join([f"Compare {a} and {b}.", *cmp_steps(a, b)]), str(max(a, b)), lang)
    if kind in ("word_add", "word_sub"):
        n = pseudo_word(rng, 2)
        op = "add" if kind == "word_add" else "sub"
        steps = add_steps(a, b) if op == "add" else sub_steps(a, b)
        sign = "+" if op == "add" else "-"
        return Problem(f"{op}|{a}|{b}", QUESTION[kind][lang].format(n=n, a=a, b=b),
                       "\n".join([f"We need {a} {sign} {b}.", *steps]), str(a + b if op == "add" else a - b), lang)
    if kind == "two_step":
        a, b = rng.randint(10, 99), rng.randint(10, 99)
        s = a + b
        c = rng.randint(1, s)
        e = f"{a} + {b} - {c}"
        steps = [e, f"First {a} + {b}.", *add_steps(a, b), f"Then {s} - {c}.", *sub_steps(s, c)]
        return Problem(f"two_step|{a}|{b}|{c}", QUESTION["op"][lang].format(e=e), "\n".join(steps), str(s - c),
                       lang)
    raise ValueError(f"unknown problem kind {kind!r}; choose one of {KINDS}")


def _lang(rng: random.Random) -> str:
    return "en" if rng.random() < 0.5 else rng.choice(LANGS)


def sample_problem(rng: random.Random, reserved: bool) -> Problem:
    """A random problem whose key is (reserved=True) or is not (False) reserved for evaluation."""
    while True:
        p = make_problem(rng.choice(KINDS), rng, _lang(rng))
        if is_reserved(p.key) == reserved:
            return p


def messages(p: Problem) -> list[dict]:
    return [{"role": "user", "content": p.question},
            {"role": "assistant", "content": p.answer, "reasoning_content": p.reasoning}]


def arithmetic_documents(seed: int = 0) -> Iterator[Document]:
    """Endless training problems (never a reserved key), one chat exchange per document."""
    from kexaone.tokenizer.chat import render

    rng = random.Random(f"kexaone-arithmetic|{seed}")
    while True:
        p = sample_problem(rng, reserved=False)
        thinking = rng.random() < 0.8
        yield Document(render(messages(p), enable_thinking=thinking), f"{DOMAIN}/{p.lang}")
