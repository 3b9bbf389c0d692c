"""Running models in the tool environments: episodes, the scripted oracle, task filtering and pass^k.

An episode is one agent run (kexaone.agents.loop.run_agent, no search, no python, no compression) on a fresh
`RegistryOffice` with the task's request as the user message; it is judged by the task's pass criterion
(kexaone.agents.envs.tasks.check). The user is not simulated: each request carries everything needed.

`GoldOracle(task)` is a scripted backend that plays the gold actions as tool calls, then answers with the required
facts. Filtering (`filter_tasks`) drops candidates whose gold replay fails, write tasks whose gold actions leave the
database unchanged, duplicates (same request on the same database, or the same start database and gold end state),
tasks the oracle cannot solve through the real tool interface (so every gold argument passes its schema), and,
when a model is given, tasks that model solves fewer than `min_pass` times in `trials`.

pass^k (tau2's agent_metrics): for a task with c successes in n trials, C(c, k) / C(n, k) is the chance that k
trials drawn without replacement all succeed; pass^k is its mean over tasks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from math import comb

from kexaone.agents.envs.office import POLICY, RegistryOffice
from kexaone.agents.envs.tasks import WRITE_TEMPLATES, ToolTask, Verdict, check, gold_hash
from kexaone.agents.loop import AgentConfig, run_agent


def pass_hat_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """Mean over tasks of C(c, k) / C(n, k), from (c successes, n trials) per task. Needs 1 <= k <= n."""
    if not counts:
        raise ValueError("pass^k needs at least one task")
    total = 0.0
    for c, n in counts:
        if not 0 <= c <= n:
            raise ValueError(f"successes must be in [0, trials], got c={c}, n={n}")
        if not 1 <= k <= n:
            raise ValueError(f"pass^k needs 1 <= k <= trials, got k={k} with {n} trials")
        total += comb(c, k) / comb(n, k)
    return total / len(counts)


@dataclass
class Episode:
    task_id: str
    answer: str
    verdict: Verdict
    actions: list[dict]  # every tool call the model made: {"name", "arguments", "ok"}
    stopped: str
    trajectory: dict = field(repr=False)

    @property
    def reward(self) -> float:
        return self.verdict.reward


def episode_config(max_steps: int = 20, temperature: float = 0.0, top_p: float = 1.0,
                   max_reply_tokens: int = 512, seed: int | None = None) -> AgentConfig:
    return AgentConfig(max_steps=max_steps, python=False, compress_every=0, summarize=False,
                       temperature=temperature, top_p=top_p, max_reply_tokens=max_reply_tokens, seed=seed)


def _trial_config(config: AgentConfig, trial: int) -> AgentConfig:
    if config.seed is None:
        return config
    return replace(config, seed=config.seed + 1_000_003 * trial)


def run_episode(backend, task: ToolTask, *, config: AgentConfig | None = None, expected_hash: str | None = None,
                trajectory_path=None) -> Episode:
    """One run of `backend` on `task`, judged by the pass criterion."""
    office = RegistryOffice(task.start_db())
    result = run_agent(task.instruction, backend, registry=office.registry(), config=config or episode_config(),
                       system_prompt=POLICY, trajectory_path=trajectory_path)
    actions = [{"name": e["name"], "arguments": e["arguments"], "ok": e["ok"]}
               for e in result.trajectory["events"] if e["type"] == "tool"]
    verdict = check(task, office.db, result.answer, expected_hash=expected_hash)
    return Episode(task.id, result.answer, verdict, actions, result.stopped, result.trajectory)


class GoldOracle:
    """A scripted backend that plays the gold actions of the task whose request opens the conversation, one per
    turn, then states the required facts. Stateless (the turn is the number of tool results so far), so one oracle
    serves any number of episodes and trials."""

    def __init__(self, tasks: ToolTask | Sequence[ToolTask]):
        from kexaone.eval.backends import ChatReply

        self._reply = ChatReply
        tasks = [tasks] if isinstance(tasks, ToolTask) else list(tasks)
        self.by_request = {t.instruction: t for t in tasks}

    def chat(self, messages, **kw):
        request = next((m["content"] for m in messages if m["role"] == "user"), None)
        if request not in self.by_request:
            raise ValueError(f"GoldOracle: no task with the request {request!r}")
        task = self.by_request[request]
        turn = sum(m["role"] == "tool" for m in messages)
        if turn < len(task.gold_actions):
            a = task.gold_actions[turn]
            return self._reply(content="", tool_calls=[{"id": f"gold_{turn}", "name": a["name"],
                                                        "arguments": dict(a["arguments"])}],
                               finish_reason="tool_calls", usage={})
        return self._reply(content="Done. " + "; ".join(task.outputs) + ".", usage={})


def gold_conversation(task: ToolTask) -> dict:
    """The oracle's episode as a chat: {"messages": [system, user, assistant tool calls, tool results, ...,
    final answer], "tools": declarations}, in the OpenAI format kexaone.tokenizer.chat renders (SFT tool-use data).
    Raises ValueError when the gold actions fail or the oracle does not pass the task."""
    office = RegistryOffice(task.start_db())
    reg = office.registry()
    result = run_agent(task.instruction, GoldOracle(task), registry=reg, config=episode_config(),
                       system_prompt=POLICY)
    if check(task, office.db, result.answer).reward != 1.0:
        raise ValueError(f"task {task.id}: the gold actions do not pass it")
    return {"messages": result.messages, "tools": reg.specs()}


def filter_tasks(candidates: Sequence[ToolTask], *, backend=None, trials: int = 1, min_pass: int = 1,
                 config: AgentConfig | None = None, progress: Callable[[str], None] | None = None
                 ) -> tuple[list[ToolTask], dict]:
    """(kept tasks, {"candidates", "kept", "dropped": {reason: count}}). The checks are listed in the module
    docstring; the kept tasks carry `meta["gold_hash"]` (and `meta["filter_passes"]` when a model was run)."""
    if backend is not None and not 0 <= min_pass <= trials:
        raise ValueError(f"min_pass must be in [0, trials={trials}], got {min_pass}")
    dropped: dict[str, int] = {}
    seen_text: set[tuple[str, str]] = set()
    seen_state: set[tuple[str, str]] = set()
    kept = []

    def drop(reason: str) -> None:
        dropped[reason] = dropped.get(reason, 0) + 1

    for task in candidates:
        start = task.start_db().hash()
        try:
            target = gold_hash(task)
        except ValueError:
            drop("gold_replay_fails")
            continue
        if task.template in WRITE_TEMPLATES and target == start:
            drop("write_without_effect")
            continue
        if task.template not in WRITE_TEMPLATES and target != start:
            drop("read_task_changes_state")
            continue
        if (task.instruction, start) in seen_text or (task.template in WRITE_TEMPLATES
                                                      and (start, target) in seen_state):
            drop("duplicate")
            continue
        if run_episode(GoldOracle(task), task, config=config, expected_hash=target).reward != 1.0:
            drop("oracle_fails")
            continue
        meta = {**task.meta, "gold_hash": target}
        if backend is not None:
            passes = sum(run_episode(backend, task, config=config, expected_hash=target).reward == 1.0
                         for _ in range(trials))
            meta["filter_passes"], meta["filter_trials"] = passes, trials
            if passes < min_pass:
                drop("model_fails")
                continue
        seen_text.add((task.instruction, start))
        seen_state.add((start, target))
        kept.append(ToolTask(task.id, task.template, task.instruction, task.db, task.gold_actions, task.outputs,
                             meta))
        if progress is not None:
            progress(task.id)
    return kept, {"candidates": len(candidates), "kept": len(kept), "dropped": dropped}


def evaluate_tools(backend, tasks: Sequence[ToolTask | dict], trials: int = 4, *, config: AgentConfig | None = None,
                   temperature: float = 1.0, top_p: float = 0.95, max_steps: int = 20, seed: int | None = 0,
                   workers: int = 1) -> dict:
    """Run every task `trials` times. Returns {"pass^1", "pass^k", "k", "pass^j" for j in 1..trials, "avg_reward",
    "n_tasks", "trials", "per_task": [{"id", "template", "successes", "trials", "rewards", "db_ok", "outputs_ok"}]}.
    Trials differ only through sampling (K-EXAONE's recommended temperature 1.0, top_p 0.95 by default); with a
    `seed`, trial t samples with seeds derived from seed + 1,000,003 * t, so a run is repeatable. `workers` > 1
    runs that many episodes at once (for endpoints; the backend must be thread-safe); results do not depend on it."""
    if trials < 1:
        raise ValueError(f"trials must be >= 1, got {trials}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tasks = [t if isinstance(t, ToolTask) else ToolTask.from_json(t) for t in tasks]
    if not tasks:
        raise ValueError("evaluate_tools needs at least one task")
    config = config or episode_config(max_steps=max_steps, temperature=temperature, top_p=top_p, seed=seed)
    targets = [gold_hash(task) for task in tasks]
    jobs = [(i, t) for i in range(len(tasks)) for t in range(trials)]

    def one(job: tuple[int, int]) -> Episode:
        i, t = job
        return run_episode(backend, tasks[i], config=_trial_config(config, t), expected_hash=targets[i])

    if workers == 1:
        episodes = [one(j) for j in jobs]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            episodes = list(pool.map(one, jobs))  # in job order, whatever order they finish in
    per_task = []
    for i, task in enumerate(tasks):
        eps = episodes[i * trials:(i + 1) * trials]
        per_task.append({"id": task.id, "template": task.template, "trials": trials,
                         "successes": sum(e.reward == 1.0 for e in eps), "rewards": [e.reward for e in eps],
                         "db_ok": [e.verdict.db_ok for e in eps], "outputs_ok": [e.verdict.outputs_ok for e in eps],
                         "steps": [len(e.actions) for e in eps]})
    counts = [(t["successes"], t["trials"]) for t in per_task]
    out: dict = {f"pass^{j}": pass_hat_k(counts, j) for j in range(1, trials + 1)}
    out.update({"pass^k": out[f"pass^{trials}"], "k": trials, "n_tasks": len(tasks), "trials": trials,
                "avg_reward": sum(sum(t["rewards"]) for t in per_task) / (len(per_task) * trials),
                "per_task": per_task})
    return out
