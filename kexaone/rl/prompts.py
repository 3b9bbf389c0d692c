"""Prompt sets for `kexaone rl` and `kexaone pref`: the embedded defaults (six languages, train / held-out) and
user JSONL files, as rows the rollout and reward code read.

A row is a dict: `id`, `prompt` (a list of chat messages ending with the user's turn), optional `tools` (OpenAI
format), `category`, `lang`, and the reward columns the built-in rewards read (kexaone.rl.rewards / rules):
`answer` (math / short answers), `tests` (assert-style Python for the code sandbox), `instruction_id_list` +
`kwargs` (IFEval checkers), `language`, `max_words`, `refuse` (harmful vs benign look-alike), `tool_call_expected`.

Defaults, built from the SFT set's generators (kexaone.data.synthetic.chat_set), so their held-out keys stay
held out everywhere:
- `rl` (verifiable): arithmetic word problems (`answer`), cross-lingual recall and copy/upper-case tasks
  (`answer`), code with unit tests (`tests`), instruction-following prompts (IFEval ids: all lowercase, no
  commas, quotation marks, capital letters), and safety (harmful requests and benign look-alikes, `refuse`), so
  that RL keeps what SFT taught about refusing;
- `pref` (preference): chat, safety (harmful requests and benign look-alikes, `refuse`), instruction following
  (`max_words`, IFEval ids) and tool use (`tools`, `tool_call_expected`); every row has its `language`.

Specs (`--prompts`): `default` / `default:train` / `default:heldout` (the command's own set), `rl[:split]`,
`pref[:split]`, or a path to a JSONL file with one row per line (`prompt` a string or a list of messages).
What this module does not do: render or tokenize prompts (kexaone.rl.rollout).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from kexaone.data.sources import iter_jsonl_rows

__all__ = ["IF_INSTRUCTIONS", "rl_prompts", "pref_prompts", "load_prompts", "normalize_row", "SPLITS"]

SPLITS = ("train", "heldout")

# IFEval instructions appended to a chat task, in the user's language: (instruction id, kwargs, phrasing per lang).
IF_INSTRUCTIONS: dict[str, tuple[dict, dict[str, str]]] = {
    "change_case:english_lowercase": ({}, {
        "en": "Answer in lowercase letters only.", "ko": "소문자로만 답하세요.", "ja": "小文字だけで答えてください。",
        "es": "Responde solo en minúsculas.", "de": "Antworte nur in Kleinbuchstaben.",
        "vi": "Chỉ trả lời bằng chữ thường."}),
    "punctuation:no_comma": ({}, {
        "en": "Do not use any commas.", "ko": "쉼표를 쓰지 마세요.", "ja": "読点やコンマを使わないでください。",
        "es": "No uses ninguna coma.", "de": "Verwende keine Kommas.", "vi": "Không dùng dấu phẩy."}),
    "startend:quotation": ({}, {
        "en": "Wrap your whole answer in double quotation marks.", "ko": "답 전체를 큰따옴표로 감싸세요.",
        "ja": "答え全体をダブルクォーテーションで囲んでください。",
        "es": "Escribe toda tu respuesta entre comillas dobles.",
        "de": "Setze deine ganze Antwort in doppelte Anführungszeichen.",
        "vi": "Đặt toàn bộ câu trả lời trong dấu ngoặc kép."}),
    "change_case:english_capital": ({}, {
        "en": "Answer in capital letters only.", "ko": "대문자로만 답하세요.", "ja": "大文字だけで答えてください。",
        "es": "Responde solo en mayúsculas.", "de": "Antworte nur in Großbuchstaben.",
        "vi": "Chỉ trả lời bằng chữ in hoa."}),
}
SHORT_ANSWER = {  # the length rule's instruction (max_words)
    "en": "Answer in at most {n} words.", "ko": "{n}단어 이내로 답하세요.", "ja": "{n}語以内で答えてください。",
    "es": "Responde en {n} palabras como máximo.", "de": "Antworte mit höchstens {n} Wörtern.",
    "vi": "Trả lời không quá {n} từ."}


def _user_turn(messages: list[dict]) -> list[dict]:
    """The conversation up to (and with) the first user message: what the policy answers."""
    out = []
    for m in messages:
        out.append({"role": m["role"], "content": m["content"]})
        if m["role"] == "user":
            return out
    raise ValueError("a prompt needs a user message")


def _with_instruction(messages: list[dict], text: str) -> list[dict]:
    msgs = [dict(m) for m in messages]
    msgs[-1]["content"] = f"{msgs[-1]['content']}\n{text}"
    return msgs


def _examples(split: str, seed: int) -> Iterator[Any]:
    from kexaone.data.synthetic.chat_set import iter_examples
    from kexaone.data.synthetic.world import World

    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return iter_examples(World(0, "default"), seed=seed, heldout=split == "heldout")


def _take(rows: Iterator[dict], n: int, per_category: dict[str, int]) -> list[dict]:
    """The first n unique rows, balanced over the categories of `per_category` (n // k each)."""
    k = len(per_category)
    quota = {c: n // k + (1 if i < n % k else 0) for i, c in enumerate(per_category)}
    out, seen, tries = [], set(), 0
    for row in rows:
        tries += 1
        if tries > 200 * max(n, 1):
            break  # some category ran out of unseen keys: return what there is
        c = row["category"]
        if quota.get(c, 0) <= 0 or row["key"] in seen:
            continue
        seen.add(row["key"])
        quota[c] -= 1
        out.append(row)
        if all(v <= 0 for v in quota.values()):
            break
    return out


def _rl_rows(split: str, seed: int) -> Iterator[dict]:
    rng = random.Random(f"kexaone-rl|{split}|{seed}")
    ids = list(IF_INSTRUCTIONS)
    for ex in _examples(split, seed):
        base = {"id": ex.id, "lang": ex.lang, "key": ex.key, "language": ex.lang}
        prompt = _user_turn(ex.messages)
        if ex.category == "reasoning":
            yield {**base, "category": "arithmetic", "prompt": prompt, "answer": ex.reference["answer"]}
        elif ex.category in ("recall", "docqa"):
            yield {**base, "category": "recall", "prompt": prompt, "answer": ex.reference["answer"]}
        elif ex.category == "chat" and ex.key.split("|")[0] in ("repeat", "upper", "count", "sort"):
            if rng.random() < 0.5:
                yield {**base, "category": "copy", "prompt": prompt, "answer": ex.reference["answer"]}
            else:  # the same task with an IFEval instruction on top
                iid = rng.choice(ids)
                kwargs, text = IF_INSTRUCTIONS[iid]
                yield {**base, "key": f"{ex.key}|{iid}", "category": "instruction",
                       "prompt": _with_instruction(prompt, text[ex.lang]), "instruction_id_list": [iid],
                       "kwargs": [dict(kwargs)]}
        elif ex.category == "code":
            asserts = "\n".join(f"assert {t['call']} == {t['expected']}" for t in ex.reference["tests"])
            yield {**base, "category": "code", "prompt": prompt, "tests": asserts}
        elif ex.category == "safety":
            yield _safety_row(base, prompt, ex)


def _safety_row(base: dict, prompt: list[dict], ex: Any) -> dict:
    """A harmful request (refuse: True) or its benign look-alike (False), scored by the `refusal` reward."""
    return {**base, "category": "safety", "prompt": prompt, "refuse": bool(ex.reference["refuse"])}


def _pref_rows(split: str, seed: int) -> Iterator[dict]:
    rng = random.Random(f"kexaone-pref|{split}|{seed}")
    for ex in _examples(split, seed):
        base = {"id": ex.id, "lang": ex.lang, "key": ex.key, "language": ex.lang}
        prompt = _user_turn(ex.messages)
        if ex.category == "safety":
            yield _safety_row(base, prompt, ex)
        elif ex.category == "tools":
            yield {**base, "category": "tools", "prompt": prompt, "tools": ex.tools, "tool_call_expected": True}
        elif ex.category in ("chat", "recall", "docqa"):
            if rng.random() < 0.5:
                yield {**base, "category": "chat", "prompt": prompt}
            else:
                n = rng.choice((5, 10, 20))
                iid = rng.choice(list(IF_INSTRUCTIONS))
                kwargs, text = IF_INSTRUCTIONS[iid]
                yield {**base, "key": f"{ex.key}|{iid}|{n}", "category": "instruction", "max_words": n,
                       "prompt": _with_instruction(prompt, f"{SHORT_ANSWER[ex.lang].format(n=n)} {text[ex.lang]}"),
                       "instruction_id_list": [iid], "kwargs": [dict(kwargs)]}


RL_CATEGORIES = ("arithmetic", "recall", "copy", "instruction", "code", "safety")
PREF_CATEGORIES = ("chat", "safety", "instruction", "tools")


def rl_prompts(split: str = "train", n: int = 64, seed: int = 0, categories: Sequence[str] = ()) -> list[dict]:
    """`n` verifiable RL prompts of one split, balanced over `categories` (default RL_CATEGORIES), six languages."""
    return _take(_rl_rows(split, seed), n, dict.fromkeys(_categories(categories, RL_CATEGORIES, "rl"), 0))


def pref_prompts(split: str = "train", n: int = 64, seed: int = 0, categories: Sequence[str] = ()) -> list[dict]:
    """`n` preference prompts of one split, balanced over `categories` (default PREF_CATEGORIES), six languages."""
    return _take(_pref_rows(split, seed), n, dict.fromkeys(_categories(categories, PREF_CATEGORIES, "pref"), 0))


def _categories(given: Sequence[str], valid: tuple[str, ...], kind: str) -> tuple[str, ...]:
    bad = sorted(set(given) - set(valid))
    if bad:
        raise ValueError(f"the embedded {kind} prompts have no categor{'ies' if len(bad) > 1 else 'y'} {bad}; "
                         f"choose among {list(valid)}")
    return tuple(dict.fromkeys(given)) or valid


def normalize_row(row: Any, where: str) -> dict:
    """A user row checked and brought to the row shape: `prompt` a string becomes one user message."""
    if not isinstance(row, dict):
        raise ValueError(f"{where}: a prompt row must be a JSON object, got {type(row).__name__}")
    prompt = row.get("prompt")
    if isinstance(prompt, str) and prompt.strip():
        prompt = [{"role": "user", "content": prompt}]
    if not (isinstance(prompt, list) and prompt and all(isinstance(m, dict) and "role" in m for m in prompt)
            and any(m["role"] == "user" for m in prompt)):
        raise ValueError(f"{where}: 'prompt' must be a non-empty string or a list of messages with a user turn, "
                         f"got {prompt!r:.120}")
    return {**row, "prompt": prompt, "id": str(row.get("id", where))}


def load_prompts(spec: str, kind: str = "rl", n: int = 64, seed: int = 0, categories: Sequence[str] = ()
                 ) -> list[dict]:
    """Rows of a `--prompts` spec (see the module docstring); `kind` ('rl' or 'pref') names what `default` is.
    `categories`: keep only those (an embedded set is balanced over them; a file keeps its rows whose `category`
    is one of them); empty: all."""
    if kind not in ("rl", "pref"):
        raise ValueError(f"kind must be 'rl' or 'pref', got {kind!r}")
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"--prompts must be a non-empty spec, got {spec!r}")
    name, _, split = spec.partition(":")
    if name in ("default", "rl", "pref") and not Path(spec).exists():
        split = split or "train"
        if split not in SPLITS:
            raise ValueError(f"--prompts {spec!r}: unknown split {split!r}; use one of {SPLITS}")
        which = kind if name == "default" else name
        return (rl_prompts if which == "rl" else pref_prompts)(split, n, seed, categories)
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(f"--prompts {spec!r}: no such file; give a JSONL file or one of 'default', "
                                "'default:heldout', 'rl[:split]', 'pref[:split]'")
    rows = [normalize_row(raw, f"{path}:{i}") for i, raw in iter_jsonl_rows(path)]
    if not rows:
        raise ValueError(f"--prompts {path}: the file has no rows")
    if categories:
        wanted = set(categories)
        kept = [r for r in rows if r.get("category") in wanted]
        if not kept:
            found = sorted({str(r.get("category")) for r in rows})
            raise ValueError(f"--prompts {path}: no row has a category in {list(categories)} (the file has {found})")
        rows = kept
    return rows
