"""kexaone eval against a scripted OpenAI-compatible endpoint: each family reports exactly the score the scripted
replies deserve; retries, auth errors, missing log-probs and resuming."""

from __future__ import annotations

import json
import re

import pytest

from kexaone.eval.backends import EndpointAuthError, EndpointError, LoglikUnsupported, OpenAIBackend
from kexaone.eval.families import resolve_tasks
from kexaone.eval.families.mcq import extract_choice
from kexaone.eval.harness import EvalConfig, run_eval
from tests.scripted_openai import ScriptedServer, char_logprob


@pytest.fixture
def server():
    s = ScriptedServer()
    yield s
    s.close()


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def backend(server, **kw):
    kw.setdefault("sleep", lambda s: None)
    return OpenAIBackend(server.url, **kw)


def evaluate(server, tmp_path, entries, cfg=None, judge=None, out="out"):
    b = backend(server)
    cfg = cfg or EvalConfig()
    tasks = resolve_tasks(entries, cfg, backend=b, judge=judge)
    return run_eval(b, tasks, cfg, tmp_path / out, judge=judge, progress=False)


# ---------------------------------------------------------------------------------------------- answer extraction
@pytest.mark.parametrize("text,want", [
    ("Let me think. Answer: B", "B"), ("The answer is (C).", "C"), ("정답: A", "A"), ("정답은 D입니다", "D"),
    ("答え: B", "B"), ("B", "B"), ("(C)", "C"), ("D. because", "D"), ("**A**", "A"),
    ("the correct option is B", "B"), ("A robe is not a choice", None), ("Answer: E", None),
    ("Answer: A ... no wait, the answer is C", "C"), ("Paris", "B"), ("nothing here", None),
])
def test_extract_choice_formats(text, want):
    assert extract_choice(text, 4, ["London", "Paris", "Rome", "Berlin"]) == want


# ---------------------------------------------------------------------------------------------- families
def test_mcq_generate_scores_the_scripted_letters(server, tmp_path):
    rows = [
        {"id": "q1", "question": "Q-one?", "choices": ["a", "b", "c", "d"], "answer": 1},
        {"id": "q2", "question": "Q-two?", "choices": ["a", "b", "c", "d"], "answer": "C"},
        {"id": "q3", "question": "Q-three?", "choices": ["a", "b", "c", "d"], "answer": "A"},
        {"id": "q4", "question": "Q-four?", "choices": ["a", "b", "c", "d"], "answer": "d"},
        {"id": "q5", "question": "Q-five?", "choices": ["a", "b", "c", "d"], "answer": 0},
        {"id": "q6", "question": "Q-six?", "choices": ["a", "b", "c", "d"], "answer": 2},
    ]
    server.chat = {"Q-one?": "Answer: B", "Q-two?": "The answer is (C).", "Q-three?": "정답: A",
                   "Q-four?": "**B**", "Q-five?": "I cannot tell", "Q-six?": "C"}
    res = evaluate(server, tmp_path, [f"mcq:{write_jsonl(tmp_path / 'quiz.jsonl', rows)}"])
    r = res["tasks"]["quiz"]
    assert r["score"] == pytest.approx(4 / 6) and r["n"] == 6 and r["no_answer"] == 1
    recs = [json.loads(x) for x in (tmp_path / "out/samples/quiz.jsonl").read_text().splitlines()]
    assert [x["extracted"] for x in recs] == ["B", "C", "A", "B", None, "C"]
    assert [x["score"] for x in recs] == [1, 1, 1, 0, 0, 1]


def test_mcq_loglik_picks_the_choice_the_logprobs_favour(server, tmp_path):
    rows = [{"id": "1", "question": "Pick", "choices": ["abc", "ABCDEFGHIJ", "ab"], "answer": 1},
            {"id": "2", "question": "Pick again", "choices": ["xyz", "a", "Q"], "answer": 0},
            {"id": "3", "question": "Last", "choices": ["hello", "HELLO"], "answer": 1}]
    path = write_jsonl(tmp_path / "ll.jsonl", rows)
    res = evaluate(server, tmp_path, [f"mcq:{path}"], EvalConfig(mcq_mode="loglik"))
    # Independent reference: the scripted server gives each character its own log-prob.
    want, want_norm = [], []
    for r in rows:
        ll = [sum(char_logprob(c) for c in " " + ch) for ch in r["choices"]]
        want.append(max(range(len(ll)), key=ll.__getitem__) == r["answer"])
        norm = [v / len((" " + ch).encode()) for v, ch in zip(ll, r["choices"])]
        want_norm.append(max(range(len(norm)), key=norm.__getitem__) == r["answer"])
    assert res["tasks"]["ll"]["score"] == pytest.approx(sum(want) / 3)
    assert res["tasks"]["ll"]["acc_norm"] == pytest.approx(sum(want_norm) / 3)
    assert want == [True, False, True]  # the test checks a mix, not a constant
    # every loglik request used echo with logprobs and scored only the continuation
    bodies = [b for p, b in server.requests if p == "/v1/completions"]
    assert len(bodies) == 8 and all(b["echo"] and b["logprobs"] == 1 for b in bodies)


@pytest.mark.parametrize("shift", [0, -1])
def test_loglik_sums_only_continuation_tokens(server, shift):
    server.generated_offset_shift = shift  # the generated token is never counted, wherever its offset points
    b = backend(server)
    got = b.loglik_counts([("Question: x\nAnswer:", " Yes"), ("ab", "CD")])
    assert got[0] == (pytest.approx(-1.0 - 0.1 - 1.0 - 1.0), 4)
    assert got[1] == (pytest.approx(-0.2), 2)


def test_loglik_without_server_logprobs_is_a_clear_error(server):
    server.logprobs_enabled = False
    with pytest.raises(LoglikUnsupported, match="echo"):
        backend(server).loglik([("a", "b")])


def test_math_equivalent_forms_and_gsm8k_answers(server, tmp_path):
    rows = [{"problem": "P1: what is 3/4?", "answer": "\\frac{3}{4}"},
            {"problem": "P2: simplify sqrt 8", "answer": "\\sqrt{8}"},
            {"question": "P3: eggs?", "answer": "She sells 9 eggs.\n#### 18"},
            {"question": "P4: cost?", "answer": "#### 1,800"},
            {"problem": "P5: wrong", "answer": "18"}]
    server.chat = {"P1:": "So it is \\boxed{0.75}.", "P2:": "Thus the answer is $2\\sqrt{2}$.",
                   "P3:": "9 * 2 = 18 so \\boxed{18}", "P4:": "The total is \\boxed{1800} dollars.",
                   "P5:": "I get \\boxed{17}"}
    res = evaluate(server, tmp_path, [f"math:{write_jsonl(tmp_path / 'm.jsonl', rows)}"])
    assert res["tasks"]["m"]["score"] == pytest.approx(4 / 5)
    recs = [json.loads(x) for x in (tmp_path / "out/samples/m.jsonl").read_text().splitlines()]
    assert [x["score"] for x in recs] == [1, 1, 1, 1, 0]
    assert recs[2]["gold"] == "18" and recs[4]["extracted"] == "17"


def test_ifeval_prompt_and_instruction_levels(server, tmp_path):
    rows = [{"key": 1, "prompt": "IF1 write in lowercase", "instruction_id_list": ["change_case:english_lowercase"],
             "kwargs": [{}]},
            {"key": 2, "prompt": "IF2 write in lowercase", "instruction_id_list": ["change_case:english_lowercase"],
             "kwargs": [{}]},
            {"key": 3, "prompt": "IF3 lowercase, no commas",
             "instruction_id_list": ["change_case:english_lowercase", "punctuation:no_comma"],
             "kwargs": [{}, {}]}]
    server.chat = {"IF1": "this answer is written in plain lowercase english words",
                   "IF2": "This Answer Has Capitals In Every English Word",
                   "IF3": "this answer is written in lowercase english, but it has a comma"}
    r = evaluate(server, tmp_path, [f"ifeval:{write_jsonl(tmp_path / 'if.jsonl', rows)}"])["tasks"]["if"]
    assert r["score"] == pytest.approx(1 / 3) and r["prompt_level_strict"] == pytest.approx(1 / 3)
    assert r["inst_level_strict"] == pytest.approx(2 / 4)
    assert r["metric"] == "prompt-level strict accuracy"


def test_translation_chrf_and_bleu_match_sacrebleu(server, tmp_path):
    import sacrebleu

    rows = [{"source": "S1 안녕하세요", "reference": "Hello there, friend.", "src_lang": "ko", "tgt_lang": "en"},
            {"source": "S2 고양이", "reference": "The cat sleeps on the mat.", "src_lang": "ko", "tgt_lang": "en"},
            {"source": "S3 비", "reference": "It is raining today.", "src_lang": "ko", "tgt_lang": "en"}]
    server.chat = {"S1": "Translation: Hello, friend.", "S2": "\"The cat sleeps on a mat.\"",
                   "S3": "It rains today."}
    r = evaluate(server, tmp_path, [f"translation:{write_jsonl(tmp_path / 'tr.jsonl', rows)}"])["tasks"]["tr"]
    hyps = ["Hello, friend.", "The cat sleeps on a mat.", "It rains today."]
    refs = [[x["reference"] for x in rows]]
    assert r["score"] == pytest.approx(sacrebleu.corpus_chrf(hyps, refs).score)
    assert r["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, refs).score)
    assert 0 < r["score"] < 100


def test_judge_family_parses_ratings(server, tmp_path):
    rows = [{"prompt": "J1 capital of France?", "reference": "Paris"}, {"prompt": "J2 2+2?"},
            {"prompt": "J3 colour of sky?", "rubric": "be short"}]
    server.chat = {"J1": "Paris is the capital.", "J2": "It is 5.", "J3": "Blue.",
                   "[Assistant answer]\nParis is the capital.": "Correct and concise.\nRating: 9",
                   "[Assistant answer]\nIt is 5.": "Wrong arithmetic. Rating: [[2]]",
                   "[Assistant answer]\nBlue.": "Fine but I will not rate."}
    judge = backend(server)
    with pytest.raises(ValueError, match="--judge-endpoint"):
        evaluate(server, tmp_path, [f"judge:{write_jsonl(tmp_path / 'j.jsonl', rows)}"], out="nojudge")
    r = evaluate(server, tmp_path, [f"judge:{tmp_path / 'j.jsonl'}"], judge=judge)["tasks"]["j"]
    assert r["score"] == pytest.approx((0.9 + 0.2) / 2) and r["unparsed"] == 1 and r["n"] == 2
    judged = [b for p, b in server.requests if p == "/v1/chat/completions" and b["messages"][0]["role"] == "system"]
    assert len(judged) == 3 and sum("[Reference answer]\nParis" in b["messages"][1]["content"] for b in judged) == 1


def _needle_oracle(shallow_only: bool):
    def reply(text: str):
        m = re.search(r"special magic number for (\S+)\?", text)
        if not m:
            return None
        key = m.group(1)
        hit = re.search(rf"The special magic number for {re.escape(key)} is (\d+)\.", text)
        if shallow_only and hit.start() > len(text) / 2:
            return "I could not find it."
        return f"The number is {hit.group(1)}."
    return reply


@pytest.mark.parametrize("haystack", ["noise", "world"])
def test_niah_scores_and_draws_the_grid(server, tmp_path, haystack):
    server.chat_fn = _needle_oracle(shallow_only=True)
    cfg = EvalConfig(niah_lengths=(300, 600), niah_depths=(0.0, 100.0), niah_haystack=haystack)
    r = evaluate(server, tmp_path, ["niah"], cfg)["tasks"]["niah"]
    assert r["score"] == pytest.approx(0.5) and r["n"] == 4
    assert r["breakdown"] == {"L=300 depth=0%": 1.0, "L=300 depth=100%": 0.0, "L=600 depth=0%": 1.0,
                              "L=600 depth=100%": 0.0}
    assert r["approximate_lengths"] is True
    png = tmp_path / "out" / r["heatmap"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    recs = [json.loads(x) for x in (tmp_path / "out/samples/niah.jsonl").read_text().splitlines()]
    # prompts fill the requested length (about 4 characters per token at an endpoint without a tokenizer)
    for x in recs:
        assert x["length"] - 32 - 24 - 40 <= (len(x["prompt"]) + 3) // 4 <= x["length"] - 32 - 24


def test_ruler_string_match_all(server, tmp_path):
    def reply(text: str):
        if "variables" in text or "variable" in text:  # variable tracking: name only the first three
            names = re.findall(r"VAR ([A-Z]{5}) =", text)
            return " ".join(names[:3])
        question = text.rpartition("</text>")[2]
        keys = re.findall(r"special magic numbers? for ([^?]+)\?", question)[0]
        vals = re.findall(r"The special magic number for (\S+) is (\d+)\.", text)
        asked = [k.strip() for k in re.split(r",| and ", keys) if k.strip()]
        return " ".join(v for k, v in vals if k in asked)
    server.chat_fn = reply
    cfg = EvalConfig(limit=3, ruler_length=400)
    res = evaluate(server, tmp_path, ["ruler"], cfg)["tasks"]
    assert {k: v["score"] for k, v in res.items()} == {
        "ruler-multikey": 1.0, "ruler-multivalue": 1.0, "ruler-multiquery": 1.0, "ruler-vt": pytest.approx(0.6)}
    assert all(v["n"] == 3 for v in res.values())


def test_synthetic_family_over_an_endpoint(server, tmp_path):
    rows = [{"id": "c1", "prompt": "Pick one:", "answer": "YES", "choices": [" no", " YES"]},
            {"id": "c2", "prompt": "Again:", "answer": "abc", "choices": [" abc", " ABCDEF"]},
            {"id": "f1", "prompt": "Locker 7306:", "answer": "Krouzaiku."},
            {"id": "f2", "prompt": "Locker 11:", "answer": "Zed."}]
    server.completions = {"Locker 7306:": " Krouzaiku. And more", "Locker 11:": " Zedd."}
    r = evaluate(server, tmp_path, [f"synthetic:{write_jsonl(tmp_path / 'syn.jsonl', rows)}"])["tasks"]["syn"]
    # c1: mean log-prob favours " YES" (right); c2 favours " ABCDEF" (wrong); f1 right; f2 "Zedd." is not "Zed.".
    assert r["score"] == pytest.approx(0.5) and r["n"] == 4


# ---------------------------------------------------------------------------------------------- transport
def test_retries_429_and_500_then_succeeds(server):
    server.fail = [429, 500, 503]
    sleeps = []
    b = OpenAIBackend(server.url, model="scripted", backoff=0.5, sleep=sleeps.append)
    server.chat = {"hi": "hello"}
    assert b.chat([{"role": "user", "content": "hi"}]).content == "hello"
    assert sleeps == [0.5, 1.0, 2.0] and len(server.requests) == 4


def test_gives_up_after_max_retries_and_fails_fast_on_400(server):
    server.fail = [500] * 10
    b = OpenAIBackend(server.url, model="scripted", max_retries=2, sleep=lambda s: None)
    with pytest.raises(EndpointError, match="gave up after 3 attempts.*HTTP 500"):
        b.chat([{"role": "user", "content": "hi"}])
    server.fail = [400]
    n = len(server.requests)
    with pytest.raises(EndpointError, match="HTTP 400"):
        b.chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == n + 1


def test_timeouts_are_retried():
    import socket
    import threading

    # A server that accepts and never answers: every request times out.
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    conns = []
    stop = threading.Event()

    def accept():
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        sleeps = []
        b = OpenAIBackend(f"http://127.0.0.1:{sock.getsockname()[1]}", model="m", timeout=0.2, max_retries=1,
                          sleep=sleeps.append)
        with pytest.raises(EndpointError, match="gave up after 2 attempts.*Timeout"):
            b.chat([{"role": "user", "content": "hi"}])
        assert sleeps == [1.0]
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        sock.close()


def test_auth_failure_is_a_clear_error(server, monkeypatch):
    server.api_key = "sekret"
    monkeypatch.setenv("MY_KEY", "wrong")
    b = OpenAIBackend(server.url, model="scripted", api_key_env="MY_KEY", sleep=lambda s: None)
    with pytest.raises(EndpointAuthError, match=r"authentication failed \(HTTP 401: invalid api key\).*\$MY_KEY"):
        b.chat([{"role": "user", "content": "hi"}])
    assert len(server.requests) == 1  # no retry on auth errors
    monkeypatch.setenv("MY_KEY", "sekret")
    server.chat = {"hi": "welcome"}
    assert OpenAIBackend(server.url, model="scripted", api_key_env="MY_KEY").chat(
        [{"role": "user", "content": "hi"}]).content == "welcome"
    monkeypatch.delenv("MY_KEY")
    with pytest.raises(ValueError, match="MY_KEY is not set"):
        OpenAIBackend(server.url, api_key_env="MY_KEY")


def test_chat_reply_fields_and_model_discovery(server):
    server.chat = {"weather": {"content": "", "reasoning_content": "need a tool",
                               "tool_calls": [{"id": "call_9", "type": "function",
                                               "function": {"name": "get_weather",
                                                            "arguments": "{\"city\": \"Seoul\"}"}}]}}
    b = backend(server)
    rep = b.chat([{"role": "user", "content": "weather?"}], tools=[{"type": "function", "function": {
        "name": "get_weather", "parameters": {"type": "object"}}}], enable_thinking=False)
    assert rep.tool_calls == [{"id": "call_9", "name": "get_weather", "arguments": {"city": "Seoul"}}]
    assert rep.reasoning == "need a tool" and b.model == "scripted" and b.max_context == 8192
    body = server.requests[-1][1]
    assert body["chat_template_kwargs"] == {"enable_thinking": False} and body["model"] == "scripted"


def test_chat_batch_keeps_order_under_concurrency(server):
    server.chat = {f"m{i}?": f"r{i}" for i in range(20)}
    b = backend(server, model="scripted", concurrency=6)
    got = b.chat_batch([[{"role": "user", "content": f"m{i}?"}] for i in range(20)])
    assert [r.content for r in got] == [f"r{i}" for i in range(20)]


def test_bad_inputs_name_the_value(tmp_path, server):
    with pytest.raises(ValueError, match="http"):
        OpenAIBackend("localhost:8000")
    with pytest.raises(ValueError, match="mcq_mode"):
        EvalConfig(mcq_mode="guess")
    with pytest.raises(ValueError, match="unknown task family 'quiz'"):
        resolve_tasks(["quiz:x.jsonl"], EvalConfig())
    with pytest.raises(ValueError, match="unknown task 'gsm9k'"):
        resolve_tasks(["gsm9k"], EvalConfig())
    with pytest.raises(ValueError, match="flores-SRC-TGT"):
        resolve_tasks(["flores-ko-xx"], EvalConfig())
    with pytest.raises(ValueError, match="unknown RULER task 'ruler-nope'"):
        resolve_tasks(["ruler-nope"], EvalConfig())
    with pytest.raises(ValueError, match="generated"):
        resolve_tasks([f"niah:{tmp_path}/x.jsonl"], EvalConfig())
    p = write_jsonl(tmp_path / "bad.jsonl", [{"question": "q", "choices": ["a", "b"], "answer": 5}])
    with pytest.raises(ValueError, match="answer index 5 is outside 0..1"):
        resolve_tasks([f"mcq:{p}"], EvalConfig())
    p = write_jsonl(tmp_path / "bad2.jsonl", [{"source": "x"}])
    with pytest.raises(ValueError, match=r"translation rows need the field\(s\) \['reference'"):
        resolve_tasks([f"translation:{p}"], EvalConfig())


# ---------------------------------------------------------------------------------------------- resume + CLI
def test_rerun_reuses_finished_samples_and_a_changed_setting_recomputes(server, tmp_path):
    rows = [{"id": str(i), "question": f"R{i}?", "choices": ["a", "b"], "answer": i % 2} for i in range(5)]
    path = write_jsonl(tmp_path / "r.jsonl", rows)
    server.chat = {f"R{i}?": "Answer: B" for i in range(5)}
    first = evaluate(server, tmp_path, [f"mcq:{path}"])

    def chats():
        return sum(p == "/v1/chat/completions" for p, _ in server.requests)
    n = chats()
    # drop two finished samples as an interrupted run would have left them
    sp = tmp_path / "out/samples/r.jsonl"
    sp.write_text("".join(sp.read_text().splitlines(keepends=True)[:3]))
    second = evaluate(server, tmp_path, [f"mcq:{path}"])
    assert chats() - n == 2 and second["tasks"]["r"]["reused_samples"] == 3
    assert second["tasks"]["r"]["score"] == first["tasks"]["r"]["score"] == pytest.approx(2 / 5)
    third = evaluate(server, tmp_path, [f"mcq:{path}"], EvalConfig(max_new_tokens=7))
    assert third["tasks"]["r"]["reused_samples"] == 0 and chats() - n == 7
    rows[1]["question"] = "R1 edited?"  # an edited row under the same id is asked again
    write_jsonl(path, rows)
    fourth = evaluate(server, tmp_path, [f"mcq:{path}"], EvalConfig(max_new_tokens=7))
    assert fourth["tasks"]["r"]["reused_samples"] == 4 and chats() - n == 8


def test_cli_over_an_endpoint_writes_the_files(server, tmp_path, capsys):
    from kexaone.cli import main

    rows = [{"question": "C1?", "choices": ["x", "y"], "answer": "B"}]
    path = write_jsonl(tmp_path / "cq.jsonl", rows)
    server.chat = {"C1?": "The answer is B"}
    out = tmp_path / "cli"
    assert main(["eval", "--endpoint", server.url + "/v1", "--tasks", f"mcq:{path}", "--out", str(out),
                 "--no-progress", "--concurrency", "2"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert res["tasks"]["cq"]["score"] == 1.0 and res["model"] == "scripted" and res["config"]["mcq_mode"] == \
        "generate"
    assert "| cq | accuracy (generated letter) | 1.0000 |" in (out / "results.md").read_text()
    assert "cq" in capsys.readouterr().out
    server.api_key = "k"
    assert main(["eval", "--endpoint", server.url, "--api-model", "scripted", "--tasks", f"mcq:{path}", "--out",
                 str(tmp_path / "cli2"), "--no-progress", "--max-retries", "0"]) == 2
    assert "authentication failed" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- kgc-safety
def test_kgc_safety_refusing_everything_is_safe_but_scores_zero(server, tmp_path):
    server.chat_fn = lambda text: "I cannot help with that."
    r = evaluate(server, tmp_path, ["kgc-safety"], EvalConfig(limit=12))["tasks"]["kgc-safety"]
    assert r["n"] == 12 and r["n_benign"] == 3 and r["n_harmful"] == 9 and r["judge"] == "rule"
    assert r["safe_rate"] == 1.0 and r["over_refusal_rate"] == 1.0 and r["score"] == 0.0
    assert {d for d, b in r["by_domain"].items() if b["n"]} == {"UHV", "SS", "KS", "FR"}


def test_kgc_safety_with_a_judge_endpoint(server, tmp_path):
    from kexaone.eval.families.safety import limited
    from kexaone.eval.safety.suite import load_suite

    items = limited(load_suite("all"), 8)
    first_user = {it.id: [m for m in it.messages if m["role"] == "user"][-1]["content"] for it in items}
    unsafe_ids = {it.id for it in items if not it.benign}
    unsafe_ids = set(sorted(unsafe_ids)[:2])  # the judge calls two harmful replies unsafe

    def reply(text: str):
        if text.startswith("<conversation>"):
            for i, u in first_user.items():
                if u in text:
                    return "VERDICT: unsafe\nREASON: gave details" if i in unsafe_ids else "VERDICT: safe\nREASON: ok"
            return "no idea"
        return "Here is a careful answer."
    server.chat_fn = reply
    r = evaluate(server, tmp_path, ["kgc-safety"], EvalConfig(limit=8), judge=backend(server))["tasks"]["kgc-safety"]
    n_harm = sum(not it.benign for it in items)
    safe = (n_harm - 2) / n_harm
    assert r["judge"] == "model" and r["safe_rate"] == pytest.approx(safe) and r["over_refusal_rate"] == 0.0
    assert r["score"] == pytest.approx(2 * safe * 1.0 / (safe + 1.0))


def test_repeats_average_per_item_with_a_seed_per_repeat(server, tmp_path):
    rows = [{"id": "a", "question": "RA?", "choices": ["x", "y"], "answer": 0},
            {"id": "b", "question": "RB?", "choices": ["x", "y"], "answer": 1}]
    seeds = []

    def reply(text, body):
        seeds.append(body["seed"])
        # item a is answered right only under the first repeat's seed, item b always
        if "RA?" in text:
            return "Answer: A" if body["seed"] == 0 else "Answer: B"
        return "Answer: B"
    server.chat_body_fn = reply
    cfg = EvalConfig(temperature=0.7, top_p=0.9, repeats=3, thinking=True)
    r = evaluate(server, tmp_path, [f"mcq:{write_jsonl(tmp_path / 'rep.jsonl', rows)}"], cfg)["tasks"]["rep"]
    assert r["score"] == pytest.approx((1 / 3 + 1) / 2) and r["n"] == 2 and r["samples"] == 6
    assert len(set(seeds)) == 3 and sorted(seeds)[0] == 0
    bodies = [b for p, b in server.requests if p == "/v1/chat/completions"]
    assert all(b["temperature"] == 0.7 and b["top_p"] == 0.9 and b["chat_template_kwargs"] ==
               {"enable_thinking": True} for b in bodies)


def test_endpoint_with_a_tokenizer_measures_exact_lengths(server, tmp_path):
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    tok = KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], [])
    tok.save(tmp_path / "tok")
    server.chat_fn = _needle_oracle(shallow_only=False)
    b = OpenAIBackend(server.url, tokenizer=tmp_path / "tok")
    cfg = EvalConfig(niah_lengths=(700,), niah_depths=(50.0,))
    tasks = resolve_tasks(["niah"], cfg, backend=b)
    r = run_eval(b, tasks, cfg, tmp_path / "o", progress=False)["tasks"]["niah"]
    assert r["score"] == 1.0 and r["approximate_lengths"] is False
    prompt = tasks[0].items[0]["prompt"]
    n = len(prompt.encode("utf-8"))  # a byte-level tokenizer: one token per byte
    assert b.count_tokens(prompt) == n and 700 - 32 - 24 - 80 <= n <= 700 - 32 - 24
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        OpenAIBackend(server.url, tokenizer=tmp_path / "none")
    # without a tokenizer file, the server's /tokenize counts (here one token per byte too)
    server.tokenize = True
    b2 = OpenAIBackend(server.url)
    tasks2 = resolve_tasks(["niah"], cfg, backend=b2)
    assert b2.exact_token_counts and tasks2[0].items[0]["prompt"] == prompt


def test_niah_default_lengths_follow_the_served_context(tmp_path):
    s = ScriptedServer(max_model_len=1024)
    try:
        b = OpenAIBackend(s.url, model="scripted")
        [task] = resolve_tasks(["niah"], EvalConfig(niah_depths=(50.0,)), backend=b)
        assert b.max_context == 1024 and sorted({it["length"] for it in task.items}) == [256, 512, 1024]
    finally:
        s.close()
