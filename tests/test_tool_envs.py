"""Synthetic tool environments: the pass criterion on known-good and known-bad action sequences, the canonical
database hash, pass^k against hand-computed values, the task filter, and `kexaone tools synth/eval`."""

from __future__ import annotations

import hashlib
import json

import pytest
from test_agents_endpoint import ChatEndpoint, wire_call

from kexaone.agents.envs.db import RegistryDB
from kexaone.agents.envs.evaluate import (
    GoldOracle,
    episode_config,
    evaluate_tools,
    filter_tasks,
    pass_hat_k,
    run_episode,
)
from kexaone.agents.envs.office import RegistryOffice
from kexaone.agents.envs.tasks import ToolTask, check, generate_candidates, gold_hash, load_tasks, replay
from kexaone.eval.backends import ChatReply


@pytest.fixture(scope="module")
def tasks():
    return generate_candidates(12, seed=3)


def _task(tasks, template):
    return next(t for t in tasks if t.template == template)


def test_pass_criterion_good_and_bad_sequences(tasks):
    t = _task(tasks, "transfer")
    person_id = t.gold_actions[2]["arguments"]["person_id"]
    company_id = t.gold_actions[2]["arguments"]["company_id"]
    answer = f"Done: the headquarters are in {t.outputs[0]}."

    good, errors = replay(t.start_db(), t.gold_actions)
    assert errors == [] and check(t, good.db, answer).reward == 1.0
    # Another path to the same state passes too: the write alone, without the lookups.
    direct, _ = replay(t.start_db(), [t.gold_actions[2]])
    assert check(t, direct.db, answer).reward == 1.0

    db = t.start_db()
    other = next(c for c in db.companies if c not in (company_id, db.people[person_id].employer))
    wrong_company, _ = replay(db, [{"name": "transfer_employee",
                                    "arguments": {"person_id": person_id, "company_id": other}}])
    v = check(t, wrong_company.db, answer)
    assert (v.db_ok, v.outputs_ok, v.reward) == (False, True, 0.0)
    extra, _ = replay(t.start_db(), t.gold_actions + [{"name": "move_person", "arguments": {
        "person_id": person_id, "city_id": next(c for c in db.cities if c != db.people[person_id].home_city)}}])
    assert not check(t, extra.db, answer).db_ok
    reads_only, _ = replay(t.start_db(), t.gold_actions[:2])
    assert not check(t, reads_only.db, answer).db_ok
    v = check(t, good.db, "I updated the record.")
    assert (v.db_ok, v.outputs_ok, v.missing) == (True, False, (t.outputs[0],))


def test_facts_match_as_whole_words(tasks):
    t = ToolTask("x", "bulk_transfer", "q", tasks[0].db, [], ["1"])
    db = t.start_db()
    assert check(t, db, "I moved 1 person.").outputs_ok
    assert not check(t, db, "I moved 10 people.").outputs_ok
    t2 = ToolTask("y", "lookup", "q", tasks[0].db, [], ["Krazas", "1,926"])
    assert check(t2, db, "born in KRAZAS in 1926").outputs_ok  # case and commas ignored
    assert check(t2, db, "Krazas에서 1926년에 태어났습니다.").outputs_ok  # Korean particles may touch the facts
    assert not check(t2, db, "born in Krazasville in 1926").outputs_ok


def test_db_hash_is_canonical(tasks):
    d = tasks[0].db
    reordered = {table: dict(reversed(list(rows.items()))) for table, rows in reversed(list(d.items()))}
    assert RegistryDB.from_dict(reordered).hash() == RegistryDB.from_dict(d).hash()
    # Independent reference: sha256 of the sorted-key compact JSON.
    ref = hashlib.sha256(json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()).hexdigest()
    assert RegistryDB.from_dict(d).hash() == ref
    changed = RegistryDB.from_dict(d)
    next(iter(changed.people.values())).birth_year += 1
    assert changed.hash() != ref
    with pytest.raises(ValueError, match="tables"):
        RegistryDB.from_dict({"people": {}})


def test_pass_hat_k_hand_computed():
    counts = [(4, 4), (2, 4), (0, 4), (3, 4)]
    assert pass_hat_k(counts, 1) == pytest.approx((1 + 0.5 + 0 + 0.75) / 4)
    assert pass_hat_k(counts, 2) == pytest.approx((1 + 1 / 6 + 0 + 3 / 6) / 4)
    assert pass_hat_k(counts, 3) == pytest.approx((1 + 0 + 0 + 1 / 4) / 4)
    assert pass_hat_k(counts, 4) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="1 <= k <= trials"):
        pass_hat_k(counts, 5)
    with pytest.raises(ValueError, match="successes must be in"):
        pass_hat_k([(5, 4)], 1)


class FlakyOracle:
    """Plays the gold actions, except in the (task, trial) episodes listed in `fail`, where it answers at once
    without acting. A new episode starts whenever the history holds no tool result yet."""

    def __init__(self, tasks, fail):
        self.oracle, self.fail = GoldOracle(tasks), set(fail)
        self.by_request = {t.instruction: t.id for t in tasks}
        self.trial: dict[str, int] = {}

    def chat(self, messages, **kw):
        tid = self.by_request[messages[1]["content"]]
        if not any(m["role"] == "tool" for m in messages):
            self.trial[tid] = self.trial.get(tid, -1) + 1
        if (tid, self.trial[tid]) in self.fail:
            return ChatReply(content="Sorry, I cannot help.")
        return self.oracle.chat(messages, **kw)


def test_evaluate_tools_pass_k(tasks):
    chosen = tasks[:3]
    fail = {(chosen[1].id, 0), (chosen[1].id, 2), (chosen[2].id, 1)}  # successes: 3, 1, 2 of 3
    res = evaluate_tools(FlakyOracle(chosen, fail), chosen, trials=3, seed=None)
    # Concurrent episodes give the same results (the oracle is stateless, so it is thread-safe).
    serial = evaluate_tools(GoldOracle(chosen), chosen, trials=3)
    assert evaluate_tools(GoldOracle(chosen), chosen, trials=3, workers=4) == serial
    assert [t["successes"] for t in res["per_task"]] == [3, 1, 2]
    assert res["pass^1"] == pytest.approx((1 + 1 / 3 + 2 / 3) / 3)
    assert res["pass^2"] == pytest.approx((1 + 0 + 1 / 3) / 3)
    assert res["pass^k"] == res["pass^3"] == pytest.approx(1 / 3) and res["k"] == 3
    assert res["per_task"][1]["db_ok"] == [chosen[1].template == "lookup", True, chosen[1].template == "lookup"]
    assert res["avg_reward"] == pytest.approx(6 / 9)


def test_filter_drops_unsolvable_and_unrealistic(tasks):
    good = _task(tasks, "relocate")
    broken = ToolTask("broken", "transfer", "Move nobody.", good.db,
                      [{"name": "transfer_employee", "arguments": {"person_id": "P99999", "company_id": "C0"}}], [])
    person = next(iter(good.start_db().people.values()))
    noop = ToolTask("noop", "move", "Move them home.", good.db,
                    [{"name": "find_person", "arguments": {"name": person.name}}], [person.name])
    badtype = ToolTask("badtype", "move", "x", good.db,
                       [{"name": "move_person", "arguments": {"person_id": 3, "city_id": "T0"}}], [])
    dup = ToolTask("dup", good.template, good.instruction, good.db, good.gold_actions, good.outputs)
    kept, stats = filter_tasks([good, broken, noop, badtype, dup])
    assert [t.id for t in kept] == [good.id] and kept[0].meta["gold_hash"] == gold_hash(good)
    assert stats == {"candidates": 5, "kept": 1, "dropped": {"gold_replay_fails": 2, "write_without_effect": 1,
                                                              "duplicate": 1}}
    # A task that needs more tool steps than the budget: the oracle cannot solve it.
    kept, stats = filter_tasks([good], config=episode_config(max_steps=2))
    assert kept == [] and stats["dropped"] == {"oracle_fails": 1}
    # A filter model that never acts drops everything; the oracle itself keeps everything.
    never = FlakyOracle([good], {(good.id, i) for i in range(5)})
    kept, stats = filter_tasks([good], backend=never, trials=2, min_pass=1)
    assert kept == [] and stats["dropped"] == {"model_fails": 1}
    kept, _ = filter_tasks([good], backend=GoldOracle([good]), trials=2, min_pass=2)
    assert kept[0].meta["filter_passes"] == 2


def test_office_tools_errors_and_schemas(tasks):
    t = _task(tasks, "invention")
    office = RegistryOffice(t.start_db())
    reg = office.registry()
    assert {x.name: x.kind for x in reg.tools.values()}["register_invention"] == "write"
    spec = next(s for s in reg.specs() if s["function"]["name"] == "transfer_employee")["function"]
    assert spec["parameters"] == {"type": "object", "additionalProperties": False,
                                  "required": ["person_id", "company_id"],
                                  "properties": {"person_id": {"type": "string", "description": "The person's id."},
                                                 "company_id": {"type": "string",
                                                                "description": "The id of the new employer."}}}
    r = reg.call("find_person", {"name": "Nobody Atall"})
    assert not r.ok and r.content == "Error: tool 'find_person' failed: ValueError: no person named 'Nobody Atall'"
    p = next(iter(office.db.people.values()))
    r = reg.call("transfer_employee", {"person_id": p.id, "company_id": p.employer})
    assert not r.ok and "already works for" in r.content
    assert office.db.hash() == t.start_db().hash() and office.writes == []
    # Names match case-insensitively.
    assert reg.call("find_person", {"name": p.name.upper()}).value["id"] == p.id


def test_generation_is_deterministic_and_covers_templates():
    a, b = generate_candidates(12, seed=5), generate_candidates(12, seed=5)
    assert [x.to_json() for x in a] == [x.to_json() for x in b]
    assert {x.template for x in a} == {"transfer", "relocate", "move", "invention", "lookup", "bulk_transfer"}
    assert [x.to_json() for x in generate_candidates(12, seed=6)] != [x.to_json() for x in a]
    with pytest.raises(ValueError, match="unknown task templates"):
        generate_candidates(3, templates=("fly",))
    with pytest.raises(ValueError, match="unsupported request languages"):
        generate_candidates(3, langs=("xx",))
    ko = generate_candidates(12, seed=5, langs=("en", "ko"))
    assert {x.meta["lang"] for x in ko} == {"en", "ko"}
    assert all(any("\uac00" <= ch <= "\ud7a3" for ch in x.instruction) == (x.meta["lang"] == "ko") for x in ko)
    for t in ko:
        assert run_episode(GoldOracle(t), t).reward == 1.0
    for t in a:  # every gold replay succeeds and the run through the tool interface passes
        assert run_episode(GoldOracle(t), t).reward == 1.0


def oracle_endpoint(tasks) -> ChatEndpoint:
    """An OpenAI-compatible server whose replies come from GoldOracle (tool calls on the wire as JSON strings)."""
    oracle = GoldOracle(tasks)

    def respond(body: dict) -> dict:
        r = oracle.chat(body["messages"])
        msg = {"content": r.content}
        if r.tool_calls:
            msg["tool_calls"] = [wire_call(c["name"], c["arguments"], c["id"]) for c in r.tool_calls]
        return msg

    return ChatEndpoint(respond)


def test_tools_cli_synth_and_eval(tmp_path, capsys):
    from kexaone.cli import main

    out = tmp_path / "tasks.jsonl"
    assert main(["tools", "synth", "--out", str(out), "--n", "8", "--seed", "2", "--world-size", "tiny"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    loaded = load_tasks(out)
    assert stats["kept"] == len(loaded) > 0 and stats["candidates"] == 8
    first = out.read_bytes()
    assert main(["tools", "synth", "--out", str(out), "--n", "8", "--seed", "2", "--world-size", "tiny"]) == 0
    assert out.read_bytes() == first  # deterministic
    capsys.readouterr()

    ep = oracle_endpoint(loaded)
    try:
        # The oracle endpoint as the filter model: every task survives, with its passes recorded.
        filt = tmp_path / "filtered.jsonl"
        assert main(["tools", "synth", "--out", str(filt), "--n", "8", "--seed", "2", "--world-size", "tiny",
                     "--filter-endpoint", ep.url, "--filter-trials", "2", "--filter-min-pass", "2"]) == 0
        assert [t.meta["filter_passes"] for t in load_tasks(filt)] == [2] * len(loaded)
        capsys.readouterr()
        res_path = tmp_path / "res.json"
        assert main(["tools", "eval", "--tasks", str(out), "--endpoint", ep.url, "--trials", "2",
                     "--out", str(res_path), "--workers", "4"]) == 0
        summary = json.loads(capsys.readouterr().out)
        assert summary["pass^1"] == summary["pass^k"] == 1.0 and summary["n_tasks"] == len(loaded)
        assert len(json.loads(res_path.read_text())["per_task"]) == len(loaded)
        req = [r for r in ep.requests if any(m["role"] == "tool" for m in r["messages"])][-1]  # from eval
        tool_msg = next(m for m in req["messages"] if m["role"] == "tool")
        assert tool_msg["tool_call_id"] == "gold_0" and req["temperature"] == 1.0 and req["top_p"] == 0.95
        assert isinstance(req["seed"], int)
    finally:
        ep.close()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "x"}\n')
    assert main(["tools", "eval", "--tasks", str(bad), "--endpoint", "http://127.0.0.1:9"]) == 2
    assert "bad tool task" in capsys.readouterr().err


def test_gold_conversation_renders_as_kexaone_chat(tasks):
    from kexaone.agents.envs.evaluate import gold_conversation
    from kexaone.tokenizer.chat import render

    t = _task(tasks, "relocate")
    conv = gold_conversation(t)
    msgs = conv["messages"]
    assert [m["role"] for m in msgs] == ["system", "user"] + ["assistant", "tool"] * 3 + ["assistant"]
    assert [json.loads(m["tool_calls"][0]["function"]["arguments"]) for m in msgs if m.get("tool_calls")] == [
        a["arguments"] for a in t.gold_actions]
    assert msgs[-1]["content"] == f"Done. {t.outputs[0]}."
    text = render(msgs, tools=conv["tools"])
    assert text.count("<|tool|>") == 3 and text.count("<tool_call>") == 3 and "<|tool_declare|>" in text
    broken = ToolTask("b", t.template, t.instruction, t.db, t.gold_actions[:2] + [
        {"name": "relocate_company", "arguments": {"company_id": "C99999", "city_id": "T0"}}], t.outputs)
    with pytest.raises(ValueError, match="gold actions fail"):
        gold_conversation(broken)
