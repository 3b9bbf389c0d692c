"""lm-evaluation-harness drives `kexaone serve`: a local multiple-choice task through `--model local-completions`
(token-id prompts, echo + logprobs, the remote tokenizer routes), whose per-item log-likelihoods and accuracy must
equal what `token_logprobs` gives directly on the same tokens, and a generate_until task through
`--model local-chat-completions`, whose answers must equal the engine's own chat replies."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest
import torch

from kexaone.engine import Engine
from kexaone.model.scoring import token_logprobs
from serve_support import serve_subprocess
from test_engine_models import byte_tokenizer, tiny_model

pytest.importorskip("lm_eval")
pytest.importorskip("tenacity")

MODEL = "kx-tiny"
ITEMS = [
    {"question": "Q: What colour is the sky? A:", "choices": ["blue", "green", "red"], "answer": 0},
    {"question": "Q: 2 + 3 = ? A:", "choices": ["4", "5", "6", "7"], "answer": 1},
    {"question": "Q: Capital of Korea? A:", "choices": ["Busan", "Seoul"], "answer": 1},
    {"question": "Q: 고양이는 무엇을 좋아하나요? A:", "choices": ["생선", "돌", "비"], "answer": 0},
    {"question": "Q: Opposite of hot? A:", "choices": ["warm", "cold", "loud"], "answer": 1},
    {"question": "Q: First letter? A:", "choices": ["a", "z"], "answer": 0},
]
MCQ_YAML = """task: kx_mcq
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: choices
doc_to_target: answer
metric_list:
  - metric: acc
"""
GEN_YAML = """task: kx_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {cache}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{choices[answer]}}}}"
generation_kwargs:
  until: ["\\n\\n"]
  max_gen_toks: 6
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm_eval")
    tok = byte_tokenizer()
    model = tiny_model(1, vocab_size=tok.vocab_size)
    model.save_pretrained(root / "model")
    tok.save(root / "model")
    data = root / "items.jsonl"
    data.write_text("".join(json.dumps(x, ensure_ascii=False) + "\n" for x in ITEMS), encoding="utf-8")
    tasks = root / "tasks"
    tasks.mkdir()
    (tasks / "kx_mcq.yaml").write_text(MCQ_YAML.format(data=data, cache=root / "hf"), encoding="utf-8")
    (tasks / "kx_gen.yaml").write_text(GEN_YAML.format(data=data, cache=root / "hf"), encoding="utf-8")
    with serve_subprocess(root / "model", "--served-model-name", MODEL, "--log-level", "warning") as url:
        yield url, root, Engine.from_pretrained(root / "model")


def _lm_eval(root, task: str, model: str, model_args: str, *extra: str) -> tuple[dict, list[dict], str]:
    out = root / f"out_{task}"
    env = dict(os.environ, HF_DATASETS_OFFLINE="1", HF_HUB_OFFLINE="1", HF_HOME=str(root / "hf_home"),
               OPENAI_API_KEY="unused", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "lm_eval", "--model", model, "--model_args", model_args, "--tasks", task,
           "--include_path", str(root / "tasks"), "--output_path", str(out), "--log_samples", "--batch_size", "1",
           *extra]
    run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-5000:]
    results = json.loads(open(sorted(glob.glob(f"{out}/**/results_*.json", recursive=True))[-1]).read())
    samples_file = sorted(glob.glob(f"{out}/**/samples_{task}_*.jsonl", recursive=True))[-1]
    samples = [json.loads(line) for line in open(samples_file, encoding="utf-8")]
    return results, sorted(samples, key=lambda s: s["doc_id"]), run.stdout + run.stderr


@pytest.mark.slow
def test_local_completions_multiple_choice_equals_token_logprobs(served):
    url, root, engine = served
    results, samples, log = _lm_eval(root, "kx_mcq", "local-completions",
                                     f"base_url={url}/v1/completions,model={MODEL},num_concurrent=1,max_retries=1")
    assert "Auto-detected remote tokenizer support" in log  # its probe of /tokenizer_info and /tokenize passed
    tok, model = engine.tokenizer, engine.model
    assert len(samples) == len(ITEMS)
    correct = 0
    for s, item in zip(samples, ITEMS):
        lls = []
        for choice in item["choices"]:
            # lm-eval's request: context = doc_to_text, continuation = " " + choice, split as it splits them
            context, cont = item["question"], " " + choice
            ctx = tok.encode(context)
            whole = tok.encode(context + cont)
            lp = token_logprobs(model, torch.tensor([whole]))[0, len(ctx):].tolist()
            lls.append(sum(lp))
        got = [float(r[0]) for r in s["filtered_resps"]]
        assert got == lls, (item, got, lls)  # exact: same forward, same primitive, same order of summation
        correct += int(max(range(len(lls)), key=lls.__getitem__) == item["answer"])
    acc = results["results"]["kx_mcq"]["acc,none"]
    assert acc == correct / len(ITEMS)

    # The same items through `kexaone eval --mcq-mode loglik` on the same model: the same accuracy, and per-item
    # log-likelihoods equal to lm-eval's (the context template is lm-eval's doc_to_text, the bare question).
    from kexaone.cli import main

    out = root / "kexaone_eval"
    assert main(["eval", "--model", str(root / "model"), "--tasks", f"mcq:{root / 'items.jsonl'}", "--mcq-mode",
                 "loglik", "--mcq-template", "{question}", "--out", str(out), "--no-progress"]) == 0
    ours = json.loads((out / "results.json").read_text())["tasks"]["items"]
    assert ours["score"] == acc
    recs = sorted((json.loads(line) for line in (out / "samples" / "items.jsonl").read_text().splitlines()),
                  key=lambda r: int(r["id"]))
    for r, s in zip(recs, samples):
        assert r["loglik"] == pytest.approx([float(x[0]) for x in s["filtered_resps"]], abs=1e-5)


@pytest.mark.slow
def test_local_chat_completions_generate_until_equals_engine_chat(served):
    url, root, engine = served
    results, samples, _ = _lm_eval(root, "kx_gen", "local-chat-completions",
                                f"base_url={url}/v1/chat/completions,model={MODEL},num_concurrent=1,max_retries=1",
                                "--apply_chat_template")
    assert len(samples) == len(ITEMS) and "exact_match,none" in results["results"]["kx_gen"]
    for s, item in zip(samples, ITEMS):
        reply = engine.chat([{"role": "user", "content": item["question"]}], max_new_tokens=6, temperature=0,
                            stop=["\n\n"])
        assert s["resps"][0][0] == reply.content, (s["resps"], reply)
