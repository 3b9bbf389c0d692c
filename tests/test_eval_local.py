"""kexaone eval on a local model: the backend against independent computations, the speedrun's synthetic tasks and
held-out bits per byte against kexaone.eval.tasks / heldout, and `kexaone eval --model` writing its files.

The model is a random tiny one saved with save_pretrained and a byte-level tokenizer (plumbing, not quality)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from kexaone.eval.backends import LocalBackend
from kexaone.eval.harness import EvalConfig, run_eval


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from kexaone import KExaoneConfig, KExaoneForCausalLM
    from kexaone.tokenizer import KExaoneTokenizer
    from kexaone.tokenizer.specials import SPECIAL_TOKENS

    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("tiny")
    KExaoneForCausalLM(KExaoneConfig.preset("tiny")).save_pretrained(d)
    KExaoneTokenizer.from_merges([b""] * len(SPECIAL_TOKENS) + [bytes([i]) for i in range(256)], []).save(d)
    return d


@pytest.fixture(scope="module")
def local(model_dir):
    return LocalBackend.from_pretrained(model_dir, batch_size=4)


def test_loglik_matches_an_independent_forward(local):
    tok, model = local.tokenizer, local.engine.model
    pairs = [("Question: 2+2?\nAnswer:", " 4"), ("abc", "defg"), ("", "xy")]
    got = local.loglik_counts(pairs)
    for (ctx, cont), (s, n) in zip(pairs, got):
        p = tok.encode(ctx) or [tok.eot_id]
        c = tok.encode(cont)
        ids = torch.tensor([p + c])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), dim=-1)
        want = sum(float(logp[len(p) + j - 1, c[j]]) for j in range(len(c)))
        assert n == len(c) and s == pytest.approx(want, abs=1e-4)
    assert local.loglik(pairs) == [s for s, _ in got]


def test_chat_batch_equals_engine_chat_and_complete_equals_generate(local):
    msgs = [[{"role": "user", "content": "Hi there"}], [{"role": "user", "content": "A longer question?"}]]
    got = local.chat_batch(msgs, max_tokens=6, enable_thinking=False)
    for m, rep in zip(msgs, got):
        ref = local.engine.chat(m, enable_thinking=False, max_new_tokens=6, temperature=0.0)
        assert rep.content == ref.content and rep.reasoning == ref.reasoning
        assert rep.usage["completion_tokens"] == len(ref.tokens)
    texts = local.complete(["abc", "hello world"], max_tokens=5)
    for p, t in zip(["abc", "hello world"], texts):
        assert t == local.engine.generate(p, max_new_tokens=5, temperature=0.0).text


def test_synthetic_tasks_score_as_kexaone_eval_tasks_does(local, tmp_path):
    from kexaone.data.synthetic.tasks import Task, TaskItem, retrieval_task
    from kexaone.eval.families.synthetic import task_from_spec
    from kexaone.eval.tasks import engine_generator, evaluate_task

    free = retrieval_task(3, num_records=3, seed=1)
    choice = Task("pick", "choices", [TaskItem("The sky is", "blue", (" blue", " green", " red")),
                                      TaskItem("One two", "three", (" three", " four")),
                                      TaskItem("Cats say", "meow", (" meow", " woof", " moo"))],
                  chance_baseline=1 / 3, metric="choice")
    res = run_eval(local, [task_from_spec(free), task_from_spec(choice)], EvalConfig(), tmp_path, progress=False)
    tok, model = local.tokenizer, local.engine.model
    for spec in (free, choice):
        ref = evaluate_task(model, tok, spec.name, spec.items, chance=spec.chance_baseline,
                            max_new_tokens=spec.max_new_tokens, extract=spec.extract, keep_examples=10,
                            generate=engine_generator(local.engine, tok))
        recs = [json.loads(x) for x in (tmp_path / "samples" / f"{spec.name}.jsonl").read_text().splitlines()]
        assert res["tasks"][spec.name]["score"] == pytest.approx(ref.accuracy)
        assert res["tasks"][spec.name]["chance"] == pytest.approx(ref.chance)
        assert [r["response"] for r in recs] == [e["output"] for e in ref.examples]
        assert [bool(r["score"]) for r in recs] == [e["correct"] for e in ref.examples]


def test_heldout_bits_per_byte_equals_evaluate_heldout(local, tmp_path):
    from kexaone.eval.families import resolve_tasks
    from kexaone.eval.heldout import evaluate_heldout

    docs = {("web", "en"): ["The quick brown fox jumps over the lazy dog.", "A second document, a bit longer."],
            ("web", "ko"): ["한국어 문서입니다."]}
    path = tmp_path / "held.jsonl"
    path.write_text("".join(json.dumps({"text": t, "domain": d, "lang": lang}, ensure_ascii=False) + "\n"
                            for (d, lang), ts in docs.items() for t in ts), encoding="utf-8")
    cfg = EvalConfig(heldout_seq_len=16)  # shorter than the documents: windows are exercised
    res = run_eval(local, resolve_tasks([f"heldout:{path}"], cfg, backend=local), cfg, tmp_path / "o",
                   progress=False)["tasks"]["held"]
    ref = evaluate_heldout(local.engine.model, local.tokenizer, docs, seq_len=16)
    nats = sum(r.loss * r.tokens for r in ref)
    nbytes = sum(r.bytes for r in ref)
    assert res["score"] == pytest.approx(nats / math.log(2) / nbytes, rel=1e-6)
    assert res["breakdown"] == {f"{r.domain}/{r.language}": pytest.approx(r.bits_per_byte) for r in ref}


def test_cli_local_model_writes_results_samples_and_heatmap(model_dir, tmp_path, capsys):
    import sacrebleu

    from kexaone.cli import main

    tr = tmp_path / "wmt.jsonl"
    tr.write_text("".join(json.dumps({"source": s, "reference": r, "src_lang": "ko", "tgt_lang": "en"},
                                     ensure_ascii=False) + "\n"
                          for s, r in [("안녕", "Hello"), ("고양이가 잔다", "The cat sleeps")]), encoding="utf-8")
    mcq = tmp_path / "quiz.jsonl"
    mcq.write_text(json.dumps({"question": "2+2?", "choices": ["4", "5", "22"], "answer": 0}) + "\n")
    out = tmp_path / "out"
    argv = ["eval", "--model", str(model_dir), "--tasks", f"translation:{tr},niah,mcq:{mcq}", "--out", str(out),
            "--max-new-tokens", "6", "--niah-lengths", "600,900", "--niah-depths", "0,50,100", "--mcq-mode",
            "loglik", "--no-progress", "--device", "cpu"]
    assert main(argv) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"wmt", "niah", "quiz"} and res["model"] == model_dir.name and res["revision"]
    recs = [json.loads(x) for x in (out / "samples/wmt.jsonl").read_text().splitlines()]
    hyps = [r["extracted"] for r in recs]
    assert res["tasks"]["wmt"]["score"] == pytest.approx(
        sacrebleu.corpus_chrf(hyps, [["Hello", "The cat sleeps"]]).score)
    niah = [json.loads(x) for x in (out / "samples/niah.jsonl").read_text().splitlines()]
    assert len(niah) == 6 and res["tasks"]["niah"]["approximate_lengths"] is False
    tok_count = LocalBackend.from_pretrained(model_dir).count_tokens
    for r in niah:  # prompts fill the grid's length with the model's own tokenizer
        assert r["length"] - 6 - 24 - 80 <= tok_count(r["prompt"]) <= r["length"] - 6 - 24
    assert (out / res["tasks"]["niah"]["heatmap"]).read_bytes()[:4] == b"\x89PNG"
    assert "| niah |" in (out / "results.md").read_text()
    assert main(argv) == 0  # a re-run reuses every sample
    again = json.loads((out / "results.json").read_text())
    assert all(t["reused_samples"] == t["samples"] for t in again["tasks"].values())
    assert {k: v["score"] for k, v in again["tasks"].items()} == {k: v["score"] for k, v in res["tasks"].items()}


def test_cli_local_model_on_the_shared_corpora(model_dir, tmp_path):
    from kexaone.cli import main
    from kexaone.eval.families import corpora_dir

    root = corpora_dir()
    if not (root / "tasks" / "gsm8k_test.jsonl").is_file() or not (root / "text" / "ko.txt").is_file():
        pytest.skip(f"evaluation corpora not found under {root} (set KEXAONE_CORPORA)")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", "gsm8k,math500,flores-ko-en,kgc-safety", "--limit",
                 "2", "--max-new-tokens", "4", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "results.json").read_text())
    assert set(res["tasks"]) == {"gsm8k", "math500", "flores-ko-en", "kgc-safety"}
    assert all(res["tasks"][t]["n"] == 2 for t in ("gsm8k", "math500", "flores-ko-en", "kgc-safety"))
    gsm = [json.loads(x) for x in (out / "samples/gsm8k.jsonl").read_text().splitlines()]
    assert gsm[0]["gold"] == "18" and "Janet" in gsm[0]["prompt"]


def test_mcq_loglik_gives_lm_eval_multiple_choice_numbers(model_dir, tmp_path):
    """lm-evaluation-harness's multiple_choice with doc_to_text = the question scores each choice as the summed
    log-prob of whole[len(ctx):] where ctx = encode(question), whole = encode(question + " " + choice)
    (the engine's lm-eval test checks `kexaone serve` gives exactly that); --mcq-template '{question}' must agree."""
    from kexaone.cli import main
    from kexaone.model.scoring import token_logprobs

    items = [{"question": "Q: What colour is the sky? A:", "choices": ["blue", "green", "red"], "answer": 0},
             {"question": "Q: 2 + 3 = ? A:", "choices": ["4", "5", "6", "7"], "answer": 1},
             {"question": "Q: 고양이는 무엇을 좋아하나요? A:", "choices": ["생선", "돌", "비"], "answer": 0},
             {"question": "Q: First letter? A:", "choices": ["a", "z"], "answer": 0}]
    path = tmp_path / "mc.jsonl"
    path.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in items), encoding="utf-8")
    out = tmp_path / "out"
    assert main(["eval", "--model", str(model_dir), "--tasks", f"mcq:{path}", "--mcq-mode", "loglik",
                 "--mcq-template", "{question}", "--out", str(out), "--no-progress", "--device", "cpu"]) == 0
    res = json.loads((out / "results.json").read_text())["tasks"]["mc"]
    recs = [json.loads(x) for x in (out / "samples/mc.jsonl").read_text().splitlines()]
    local = LocalBackend.from_pretrained(model_dir)
    tok, model = local.tokenizer, local.engine.model
    correct = 0
    for item, rec in zip(items, recs):
        lls = []
        for c in item["choices"]:
            ctx, whole = tok.encode(item["question"]), tok.encode(item["question"] + " " + c)
            with torch.no_grad():
                lls.append(float(token_logprobs(model, torch.tensor([whole]))[0, len(ctx):].sum()))
        assert rec["loglik"] == pytest.approx(lls, abs=1e-5) and rec["prompt"] == item["question"]
        correct += max(range(len(lls)), key=lls.__getitem__) == item["answer"]
    assert res["score"] == correct / len(items)


def test_speedrun_task_specs_convert_to_harness_tasks():
    from kexaone.data.synthetic.tasks import TaskItem, extract_after_think
    from kexaone.eval.families.synthetic import Synthetic, heldout_task, task_from_spec
    from kexaone.pipeline.corpus import TaskSpec

    spec = TaskSpec("arithmetic", [TaskItem("p1", "7"), TaskItem("p2", "8")], 0.5, 64, extract_after_think)
    t = task_from_spec(spec)
    assert t.name == "arithmetic" and isinstance(t.family, Synthetic) and t.family.chance == 0.5
    assert t.family.extract is extract_after_think and t.family.budget(EvalConfig()) == 64
    assert t.family.budget(EvalConfig(max_new_tokens=16)) == 16
    assert [(i["id"], i["prompt"], i["answer"], i["choices"]) for i in t.items] == [("0", "p1", "7", None),
                                                                                   ("1", "p2", "8", None)]
    h = heldout_task({("web", "en"): ["a", "b"], ("code", "py"): ["c"]})
    assert [(i["id"], i["docs"]) for i in h.items] == [("web/en", ["a", "b"]), ("code/py", ["c"])]


WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"]}}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}


def test_tool_choice_reaches_the_engine_as_a_server_gets_it(local):
    """A named tool_choice constrains every row of a batch to one call of that function with schema-valid
    arguments (the random model would not call it on its own), the call Engine.chat makes for the same row;
    "none" hides the tools; a choice naming an undeclared function is a clear error, as a server's 400."""
    import jsonschema

    msgs = [[{"role": "user", "content": "What time is it?"}], [{"role": "user", "content": "Weather in Paris?"}]]
    choice = {"type": "function", "function": {"name": "get_weather"}}
    got = local.chat_batch(msgs, tools=[TIME, WEATHER], tool_choice=choice, max_tokens=96, enable_thinking=False)
    for m, rep in zip(msgs, got):
        assert rep.finish_reason == "tool_calls" and rep.errors == [], rep
        assert [c["name"] for c in rep.tool_calls] == ["get_weather"]
        jsonschema.validate(rep.tool_calls[0]["arguments"], WEATHER["function"]["parameters"])
        ref = local.engine.chat(m, tools=[TIME, WEATHER], tool_choice=choice, enable_thinking=False,
                                max_new_tokens=96, temperature=0.0)
        assert [(c["name"], c["arguments"]) for c in ref.tool_calls] == \
            [(c["name"], c["arguments"]) for c in rep.tool_calls]
    free = local.chat_batch(msgs[:1], tools=[TIME, WEATHER], tool_choice="auto", max_tokens=12, enable_thinking=False)
    assert free[0].tool_calls == []  # unconstrained, the random model writes bytes, not a call
    hidden = local.chat_batch(msgs[:1], tools=[TIME, WEATHER], tool_choice="none", max_tokens=6, enable_thinking=False)
    plain = local.chat_batch(msgs[:1], max_tokens=6, enable_thinking=False)
    assert hidden[0].content == plain[0].content  # the prompt carries no tools
    with pytest.raises(ValueError, match="not among the declared tools"):
        local.chat_batch(msgs[:1], tools=[TIME], tool_choice=choice)


def test_model_name_keeps_the_stage_of_a_generic_directory(tmp_path):
    from kexaone.eval.backends import model_name

    assert model_name(tmp_path / "runs" / "speedrun" / "sft" / "run" / "model") == "sft/run/model"
    assert model_name(tmp_path / "my-checkpoint") == "my-checkpoint"
