"""Held-out evaluation tasks for the capabilities the synthetic corpus teaches; none of their items is in training.

- `arithmetic`: a chat question, answered after step-by-step reasoning; scored by exact match of the answer after
  `</think>`. Held out: only problem keys reserved by `arithmetic.is_reserved` (never generated for training).
- `crosslingual_recall`: "Question: ...\\nAnswer:" in language X about a world fact stated in training only in the
  other five languages; four name choices (chance 1/4).
- `retrieval`: a key-value context and a question about a record whose key is reserved (`retrieval.is_reserved_key`:
  no training document contains it); the answer restates the record ("Locker 7306: Krouzaiku."), scored by exact
  match of key and value. Chance: guessing one of the context's values.
- `code_completion`: the next line of Python code from standard-library files held out of training
  (`code.is_heldout_file`), against three lines of about the same length from other held-out files, none of which
  occurs in the prompt (chance 1/4). The true line is the one that fits the context: its indentation, the names in
  scope, the statement that must come next. (Distractors from the same file share its names and style and need a
  far stronger code model than minutes of CPU training give; a line already in the prompt would reward copying.)

Formats are kept short and identical to the training formats so that a ~30M-parameter model trained for minutes can
show each capability. Items are a pure function of (size, seed, parameters). The scoring conventions match
kexaone.eval.tasks: with `choices`, the choice with the highest log-likelihood after the prompt is the model's pick
(choices carry the leading space running text has; `answer` is the choice stripped); without, the greedy
continuation must start with the answer (after `extract` for reasoning tasks).
"""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from kexaone.data.synthetic.arithmetic import sample_problem
from kexaone.data.synthetic.code import is_heldout_file, read_source, split_code, stdlib_files
from kexaone.data.synthetic.corpus import get_size
from kexaone.data.synthetic.retrieval import make_item
from kexaone.data.synthetic.world import World

TASK_NAMES = ("arithmetic", "crosslingual_recall", "retrieval", "code_completion")


@dataclass(frozen=True)
class TaskItem:
    prompt: str
    answer: str
    choices: tuple[str, ...] | None = None
    lang: str = ""
    """Language of the prompt (for per-language breakdowns); "" when not meaningful."""


def extract_after_think(text: str) -> str:
    """The final answer of a reasoning-mode reply: what follows the last `</think>`, stripped; "" without one."""
    head, sep, tail = text.rpartition("</think>")
    return tail.strip() if sep else ""


def _identity(text: str) -> str:
    return text


@dataclass
class Task:
    name: str
    description: str
    items: list[TaskItem]
    chance_baseline: float
    """Accuracy of guessing: 1/choices, a random value of the context, or always the most common answer."""
    metric: str
    """"choice" (log-likelihood pick among `choices`) or "exact" (greedy generation, `extract`, prefix match)."""
    max_new_tokens: int | None = None
    extract: Callable[[str], str] = field(default=_identity, repr=False)

    def score(self, item: TaskItem, output: str) -> bool:
        """Whether `output` (the picked choice, or the generated text) answers `item` correctly."""
        if self.metric == "choice":
            return output.strip() == item.answer.strip()
        got, ans = self.extract(output).lstrip(), item.answer.strip()
        return bool(ans) and got.startswith(ans) and (len(got) == len(ans) or not got[len(ans)].isalnum())


def arithmetic_task(n_items: int, seed: int = 0) -> Task:
    from kexaone.tokenizer.chat import render

    rng = random.Random(f"kexaone-task-arithmetic|{seed}")
    items, seen = [], set()
    while len(items) < n_items:
        p = sample_problem(rng, reserved=True)
        if p.key in seen:
            continue
        seen.add(p.key)
        prompt = render([{"role": "user", "content": p.question}], add_generation_prompt=True, enable_thinking=True)
        items.append(TaskItem(prompt, p.answer, None, p.lang))
    top = Counter(it.answer for it in items).most_common(1)[0][1]
    return Task("arithmetic", "arithmetic with step-by-step reasoning (reserved problems), exact answer",
                items, chance_baseline=top / len(items), metric="exact", max_new_tokens=192,
                extract=extract_after_think)


def crosslingual_task(world: World, n_items: int, seed: int = 0) -> Task:
    rng = random.Random(f"kexaone-task-recall|{seed}")
    facts = list(world.heldout_facts)
    rng.shuffle(facts)
    items = []
    for f in facts[:n_items]:
        lang = f.heldout_lang
        answer = f.answer(lang)
        pool = [x for x in world.object_pool(f.kind) if x != answer]
        # Names of about the answer's length (summed log-probability favours short choices); the 3 closest
        # lengths when fewer are that close.
        near = [x for x in pool if abs(len(x) - len(answer)) <= 2]
        if len(near) < 3:
            near = sorted(pool, key=lambda x: (abs(len(x) - len(answer)), x))[:3]
        choices = [answer, *rng.sample(near, 3)]
        rng.shuffle(choices)
        items.append(TaskItem(f.qa(lang, with_answer=False), answer, tuple(" " + c for c in choices), lang))
    return Task("crosslingual_recall", "recall a world fact in a language it was never stated in (4 choices)",
                items, chance_baseline=0.25, metric="choice")


def retrieval_task(n_items: int, num_records: int = 10, seed: int = 0, tokenizer=None,
                   max_prompt_tokens: int | None = None) -> Task:
    """`num_records` records per context; with a tokenizer and max_prompt_tokens, fewer records when needed so
    that every prompt plus its answer fits in max_prompt_tokens tokens (the model's training context)."""
    if num_records < 2:
        raise ValueError(f"num_records must be >= 2, got {num_records}")
    if (tokenizer is None) != (max_prompt_tokens is None):
        raise ValueError("give both tokenizer and max_prompt_tokens, or neither")
    while True:
        rng = random.Random(f"kexaone-task-retrieval|{seed}")
        raw = [make_item(rng, num_records) for _ in range(n_items)]
        if tokenizer is None or num_records == 2:
            break
        longest = max(len(ids) for ids in tokenizer.encode_batch([r.prompt + " " + r.answer for r in raw]))
        if longest <= max_prompt_tokens:
            break
        num_records -= 1
    items = [TaskItem(r.prompt, r.answer, None, "en") for r in raw]
    return Task("retrieval", f"in-context retrieval of a value among {num_records} records, exact record",
                items, chance_baseline=1.0 / num_records, metric="exact", max_new_tokens=24)


def _completable(line: str) -> bool:
    """A line worth predicting (or offering as a distractor): some code, not a comment or a docstring fence."""
    s = line.strip()
    return len(s) >= 8 and not s.startswith(("#", '"""', "'''"))


def code_task(n_items: int, context_lines: int = 12, seed: int = 0, root=None) -> Task:
    rng = random.Random(f"kexaone-task-code|{seed}")
    candidates = []  # (header, chunk lines, target index, file)
    lines_of: dict[str, list[str]] = {}  # completable lines per held-out file
    for f in stdlib_files(root):
        if not is_heldout_file(f.rel):
            continue
        text = read_source(f)
        if text is None:
            continue
        lines_of[f.rel] = sorted({ln for ln in text.split("\n") if _completable(ln)})
        for chunk in split_code(text):
            lines = chunk.split("\n")
            for i in range(4, len(lines)):
                if _completable(lines[i]):
                    candidates.append((f.rel, lines, i))
    if not candidates:
        raise ValueError("no held-out standard-library code found for the code-completion task")
    # Lines of every held-out file by length, for distractors of about the target's length: choices are scored by
    # log-likelihood, which would otherwise favour whichever line is shortest rather than the one that follows.
    pool = sorted((len(ln), ln, rel) for rel, lns in lines_of.items() for ln in lns)
    lengths = [n for n, _, _ in pool]
    rng.shuffle(candidates)
    items = []
    for rel, lines, i in candidates:
        if len(items) == n_items:
            break
        target = lines[i]
        # Lines of the chunk up to the target; the header is kept so the prompt looks like a training document.
        ctx = lines[max(0, i - context_lines):i]
        seen = {ln.strip() for ln in ctx} | {target.strip()}
        lo, hi = bisect.bisect_left(lengths, 0.75 * len(target)), bisect.bisect_right(lengths, 1.33 * len(target))
        others = sorted({ln for _, ln, r in pool[lo:hi] if r != rel and ln.strip() not in seen})
        if len(others) < 3:
            continue
        # Each choice starts with the newline that ends the previous line, so prompt + choice tokenizes as the
        # running file does (a prompt ending in "\n" would split the newline from the indentation after it).
        prompt = f"# {rel}\n" + "\n".join(ctx)
        choices = [target, *rng.sample(others, 3)]
        rng.shuffle(choices)
        items.append(TaskItem(prompt, target, tuple("\n" + c for c in choices), "py"))
    return Task("code_completion", "next line of held-out Python stdlib code vs lines of other files (4 choices)",
                items, chance_baseline=0.25, metric="choice")


def build_tasks(size: str = "default", seed: int = 0, n_items: int = 100, retrieval_records: int = 10,
                code_context_lines: int = 12, tokenizer=None, max_prompt_tokens: int | None = None,
                corpus_seed: int = 0) -> dict[str, Task]:
    """Every held-out task for the corpus of `size` generated with `corpus_seed` (the seed given to write_corpus /
    synthetic_training_data: it fixes the world the recall task asks about). `seed` only draws the items.
    `n_items` per task (recall has at most one item per held-out fact). `retrieval_records` sizes the retrieval
    context; pass the tokenizer and the training seq_len as max_prompt_tokens to shrink it until every retrieval
    prompt fits the model's context."""
    if n_items < 1:
        raise ValueError(f"n_items must be >= 1, got {n_items}")
    world = World(corpus_seed, get_size(size).world)
    return {
        "arithmetic": arithmetic_task(n_items, seed),
        "crosslingual_recall": crosslingual_task(world, n_items, seed),
        "retrieval": retrieval_task(n_items, retrieval_records, seed, tokenizer, max_prompt_tokens),
        "code_completion": code_task(n_items, code_context_lines, seed),
    }
