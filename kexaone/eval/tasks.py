"""Accuracy on held-out tasks, each beside its chance rate and the score of the untrained model.

An item is anything with `prompt`, `answer` and optional `choices` (kexaone.data.synthetic.tasks.TaskItem):
- with `choices`: the model picks the choice whose continuation has the highest log-likelihood after the prompt,
  averaged over the continuation's tokens by default (`choice_norm="mean"`, the per-token normalisation of the
  GPT-3 paper's multiple-choice evaluations: a summed score mostly rewards whichever choice has the fewest tokens,
  which an untrained model does too); `choice_norm="sum"` gives the unnormalised score. The continuation is
  tokenised as it would be in running text (see `_continuation_ids`);
- without: greedy decoding from the prompt, correct when the generated text, leading whitespace removed, begins
  with the answer and the answer is not followed by a letter or digit ("42" does not match "421"). When the answer
  is preceded by reasoning, callers pass `extract` to pull the final answer out of the generated text.

Free-form items are decoded greedily by `generate(prompts, max_new_tokens) -> texts`: `engine_generator` wraps the
inference engine (KV cache, batched; what long reasoning answers need). Without one, `greedy_continuations` re-runs
the whole sequence each step, right-padded, so it depends on nothing but the model's forward (fine for short
answers and for tests, quadratic for long ones).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from kexaone.model.scoring import token_logprobs


CHOICE_NORMS = ("mean", "sum")


@dataclass
class TaskResult:
    task: str
    items: int
    correct: int
    accuracy: float
    chance: float
    """Accuracy of guessing (1/len(choices), or the task's own baseline for free-form answers)."""
    stderr: float
    """Binomial standard error of `accuracy`."""
    untrained_accuracy: float | None = None
    """The same evaluation of the untrained (initial) model, when it was run."""
    scoring: str = ""
    """How items were scored (choice log-likelihood normalisation, or greedy exact match)."""
    examples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def baseline(self) -> float:
        """The stronger of chance and the untrained model: what a capability must beat."""
        return max(self.chance, self.untrained_accuracy if self.untrained_accuracy is not None else 0.0)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["baseline"] = self.baseline
        return d


def _continuation_ids(tokenizer, prompt: str, continuation: str) -> tuple[list[int], list[int]]:
    """(prompt ids, continuation ids) such that their concatenation is how the model would see the text.
    SuperBPE merges may cross the prompt/continuation boundary; when encode(prompt) is a prefix of
    encode(prompt + continuation), that joint tokenisation is used, otherwise the two are encoded apart."""
    p = list(tokenizer.encode(prompt))
    whole = list(tokenizer.encode(prompt + continuation))
    if len(whole) > len(p) and whole[:len(p)] == p:
        return p, whole[len(p):]
    return p, list(tokenizer.encode(continuation))


@torch.inference_mode()
def choice_logprobs_batch(model: torch.nn.Module, tokenizer, questions: Sequence[tuple[str, Sequence[str]]],
                          device: str | torch.device = "cpu", norm: str = "sum",
                          max_rows: int = 16) -> list[list[float]]:
    """For each (prompt, choices): the log-probability of each choice's tokens after the prompt, summed over the
    tokens (norm="sum") or averaged (norm="mean"). Rows (one per choice) of several questions share a forward,
    longest first so each batch has little padding (scored by kexaone.model.scoring.token_logprobs)."""
    if norm not in CHOICE_NORMS:
        raise ValueError(f"norm must be one of {CHOICE_NORMS}, got {norm!r}")
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")
    rows: list[tuple[int, list[int], list[int]]] = []  # (question index, prompt ids, continuation ids)
    for qi, (prompt, choices) in enumerate(questions):
        if not choices:
            raise ValueError(f"question {qi} has no choices")
        for c in choices:
            p, cont = _continuation_ids(tokenizer, prompt, c)
            if not cont:
                raise ValueError(f"choice {c!r} encodes to no tokens")
            if not p:
                raise ValueError(f"prompt of question {qi} encodes to no tokens")
            rows.append((qi, p, cont))
    totals = [0.0] * len(rows)
    order = sorted(range(len(rows)), key=lambda r: -(len(rows[r][1]) + len(rows[r][2])))
    for b in range(0, len(order), max_rows):
        idx = order[b:b + max_rows]
        width = max(len(rows[r][1]) + len(rows[r][2]) for r in idx)
        ids_BT = torch.full((len(idx), width), tokenizer.pad_id, dtype=torch.long)
        score_BT = torch.zeros(len(idx), width, dtype=torch.bool)  # the continuation's positions
        for row, r in enumerate(idx):
            _, p, c = rows[r]
            ids_BT[row, :len(p) + len(c)] = torch.tensor(p + c, dtype=torch.long)
            score_BT[row, len(p):len(p) + len(c)] = True
        logp_BT = token_logprobs(model, ids_BT.to(device), mask=score_BT.to(device)).cpu()
        for row, r in enumerate(idx):
            total = float(logp_BT[row].sum())
            totals[r] = total / len(rows[r][2]) if norm == "mean" else total
    out: list[list[float]] = [[] for _ in questions]
    for r, (qi, _, _) in enumerate(rows):
        out[qi].append(totals[r])
    return out


def choice_logprobs(model: torch.nn.Module, tokenizer, prompt: str, choices: Sequence[str],
                    device: str | torch.device = "cpu", norm: str = "sum") -> list[float]:
    """choice_logprobs_batch for one question."""
    if not choices:
        raise ValueError("choices must not be empty")
    return choice_logprobs_batch(model, tokenizer, [(prompt, choices)], device=device, norm=norm)[0]


@torch.inference_mode()
def greedy_continuations(model: torch.nn.Module, tokenizer, prompts: Sequence[str], max_new_tokens: int,
                         stop_ids: Sequence[int] = (), batch_size: int = 16,
                         device: str | torch.device = "cpu") -> list[str]:
    """Greedy continuation text of each prompt (at most max_new_tokens tokens, cut before a stop id)."""
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    stop = set(int(s) for s in stop_ids)
    encoded = [list(x) for x in tokenizer.encode_batch(list(prompts))]
    for i, e in enumerate(encoded):
        if not e:
            raise ValueError(f"prompt {i} encodes to no tokens")
    texts = [""] * len(prompts)
    for b in range(0, len(prompts), batch_size):
        rows = encoded[b:b + batch_size]
        lens = torch.tensor([len(r) for r in rows])
        buf_BT = torch.full((len(rows), int(lens.max()) + max_new_tokens), tokenizer.pad_id, dtype=torch.long)
        for i, r in enumerate(rows):
            buf_BT[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        buf_BT = buf_BT.to(device)
        generated: list[list[int]] = [[] for _ in rows]
        live = [True] * len(rows)
        for _ in range(max_new_tokens):
            width = int(lens.max())
            logits_BTV = model(input_ids=buf_BT[:, :width]).logits
            last_BV = logits_BTV[torch.arange(len(rows)), (lens - 1).to(logits_BTV.device)]
            nxt = last_BV.argmax(dim=-1).tolist()
            for i, t in enumerate(nxt):
                if not live[i]:
                    continue
                if t in stop:
                    live[i] = False
                    continue
                generated[i].append(t)
                buf_BT[i, lens[i]] = t
                lens[i] += 1
            if not any(live):
                break
        for i, g in enumerate(generated):
            texts[b + i] = tokenizer.decode(g, skip_special_tokens=False)
    return texts


def engine_generator(engine, tokenizer, batch_size: int = 64) -> Callable[[Sequence[str], int], list[str]]:
    """A `generate` function for evaluate_task backed by kexaone.engine.Engine: greedy, batched, stopping at the
    end-of-turn token; the text keeps special tokens (reasoning answers are extracted after `</think>`)."""

    def generate(prompts: Sequence[str], max_new_tokens: int) -> list[str]:
        stop = set(engine.default_stop_token_ids())
        texts: list[str] = []
        for b in range(0, len(prompts), batch_size):
            ids = tokenizer.encode_batch(list(prompts[b:b + batch_size]))
            for r in engine.generate_batch(ids, max_new_tokens=max_new_tokens, temperature=0.0):
                toks = list(r.tokens)
                if toks and toks[-1] in stop:
                    toks = toks[:-1]
                texts.append(tokenizer.decode(toks, skip_special_tokens=False))
        return texts

    return generate


def answer_matches(generated: str, answer: str) -> bool:
    """True when `generated` (leading whitespace ignored) starts with `answer` at a word boundary."""
    g, a = generated.lstrip(), answer.strip()
    if not a or not g.startswith(a):
        return False
    rest = g[len(a):]
    return not rest or not rest[0].isalnum()


def evaluate_task(model: torch.nn.Module, tokenizer, name: str, items: Sequence[Any], chance: float | None = None,
                  max_new_tokens: int | None = None, extract: Callable[[str], str] | None = None,
                  batch_size: int = 16, keep_examples: int = 3, device: str | torch.device = "cpu",
                  generate: Callable[[Sequence[str], int], list[str]] | None = None,
                  choice_norm: str = "mean") -> TaskResult:
    """Accuracy of `model` on `items` (see the module docstring for how each kind of item is scored)."""
    if not items:
        raise ValueError(f"task {name!r} has no items")
    was_training = model.training
    model.eval()
    try:
        verdicts: list[bool] = []
        outputs: list[str] = []
        with_choices = [it for it in items if getattr(it, "choices", None)]
        free = [it for it in items if not getattr(it, "choices", None)]
        all_scores = choice_logprobs_batch(model, tokenizer, [(it.prompt, list(it.choices)) for it in with_choices],
                                           device=device, norm=choice_norm, max_rows=batch_size)
        for it, scores in zip(with_choices, all_scores):
            pick = max(range(len(scores)), key=scores.__getitem__)
            outputs.append(it.choices[pick])
            verdicts.append(it.choices[pick].strip() == str(it.answer).strip())
        if free:
            budget = max_new_tokens or max(len(tokenizer.encode(" " + str(it.answer))) for it in free) + 3
            stop = [t for t in (getattr(tokenizer, "eos_id", None), getattr(tokenizer, "eot_id", None))
                    if t is not None]
            prompts = [it.prompt for it in free]
            if generate is not None:
                texts = generate(prompts, budget)
            else:
                texts = greedy_continuations(model, tokenizer, prompts, budget, stop_ids=stop, batch_size=batch_size,
                                             device=device)
            for it, text in zip(free, texts):
                got = extract(text) if extract is not None else text
                outputs.append(text)
                verdicts.append(answer_matches(got, str(it.answer)))
        ordered = with_choices + free
        if chance is None:
            ks = [len(it.choices) for it in with_choices]
            chance = sum(1.0 / k for k in ks) / len(items) if ks else 0.0
        n, correct = len(items), sum(verdicts)
        acc = correct / n
        examples = [{"prompt": it.prompt[-300:], "answer": str(it.answer), "output": out[:300], "correct": ok}
                    for it, out, ok in list(zip(ordered, outputs, verdicts))[:keep_examples]]
        kinds = []
        if with_choices:
            kinds.append(f"{'mean' if choice_norm == 'mean' else 'summed'} log-likelihood of each choice")
        if free:
            kinds.append("greedy decoding, exact answer")
        return TaskResult(task=name, items=n, correct=correct, accuracy=acc, chance=float(chance),
                          stderr=math.sqrt(max(acc * (1 - acc), 1e-12) / n), examples=examples,
                          scoring="; ".join(kinds))
    finally:
        model.train(was_training)
