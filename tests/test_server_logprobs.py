"""`/v1/completions` with `echo` and `logprobs` (the shape OpenAI and vLLM return, numbers equal to the scoring
primitive), prompt batches, and vLLM's tokenizer routes; malformed requests get 400 naming the field."""

from __future__ import annotations

import httpx
import pytest
import torch

from kexaone.engine import Engine
from kexaone.engine.app import create_app, token_text
from kexaone.engine.chat_io import chat_prompt
from kexaone.engine.server import ServerSettings
from kexaone.model.scoring import token_logprobs
from test_engine_models import ServerThread, byte_tokenizer, one_thread, tiny_model


@pytest.fixture(scope="module")
def stack():
    with one_thread():
        tok = byte_tokenizer()
        model = tiny_model(0, vocab_size=tok.vocab_size + 7)  # padded embedding: 7 ids the tokenizer lacks
        engine = Engine(model, tok)
        server = ServerThread(create_app(engine, ServerSettings(model_name="m", max_tokens=64))).start()
        try:
            yield server, engine, tok, model
        finally:
            server.stop()


def _post(server, path, body):
    return httpx.post(server.url + path, json=body, timeout=60)


def test_echo_logprobs_of_token_prompts_equal_token_logprobs(stack):
    server, engine, tok, model = stack
    prompts = [tok.encode("The cat sat"), tok.encode("안녕 world")]
    r = _post(server, "/v1/completions", {"prompt": prompts, "max_tokens": 0, "echo": True, "logprobs": 3,
                                          "temperature": 0})
    assert r.status_code == 200, r.text
    choices = r.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1]
    for ids, c in zip(prompts, choices):
        lp = c["logprobs"]
        assert c["text"] == tok.decode(ids)
        ref = token_logprobs(model, torch.tensor([ids]))[0].tolist()
        assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
        assert lp["token_logprobs"][1:] == ref[1:]  # exact: the same training forward and primitive
        assert len(lp["tokens"]) == len(lp["text_offset"]) == len(lp["top_logprobs"]) == len(ids)
        for t in range(1, len(ids)):
            top = lp["top_logprobs"][t]
            assert len(top) == 3 and max(top.values()) >= lp["token_logprobs"][t]
            with torch.no_grad():
                logits = model(torch.tensor([ids[:t]])).logits[0, -1, :tok.vocab_size]
            assert max(top, key=top.get) == token_text(tok, int(logits.argmax()))  # ids >= the vocab never show
    lp = choices[0]["logprobs"]
    assert "".join(lp["tokens"]) == "The cat sat" and lp["text_offset"] == list(range(11))
    # byte tokens of Korean characters are spelled as bytes; offsets count the characters begun before a token
    lp = choices[1]["logprobs"]
    assert lp["tokens"][:3] == ["bytes:\\xec", "bytes:\\x95", "bytes:\\x88"]  # 안 = EC 95 88
    assert lp["text_offset"] == [0, 1, 1, 1, 2, 2, 2, 3, 4, 5, 6, 7]


def test_echo_with_one_generated_token_like_lm_eval(stack):
    server, engine, tok, model = stack
    ids = tok.encode("Question: 2+2? Answer: 4")
    r = _post(server, "/v1/completions", {"prompt": [ids], "max_tokens": 1, "echo": True, "logprobs": 1,
                                          "temperature": 0, "seed": 1234})
    assert r.status_code == 200, r.text
    lp = r.json()["choices"][0]["logprobs"]
    greedy = engine.generate(ids, max_new_tokens=1, temperature=0, stop_token_ids=[])
    assert len(lp["token_logprobs"]) == len(ids) + 1
    # the prompt is scored on its own (its numbers do not depend on what was generated), the new token in context
    ref = token_logprobs(model, torch.tensor([ids]))[0].tolist()
    assert lp["token_logprobs"][1:-1] == ref[1:]
    full = ids + greedy.tokens
    assert lp["token_logprobs"][-1] == token_logprobs(model, torch.tensor([full]))[0, -1].item()
    # the generated token was the greedy choice: its logprob is the top one (what lm-eval's is_greedy checks)
    assert lp["token_logprobs"][-1] == max(lp["top_logprobs"][-1].values())


def test_logprobs_without_echo_cover_the_generated_tokens(stack):
    server, engine, tok, model = stack
    r = _post(server, "/v1/completions", {"prompt": "Once", "max_tokens": 5, "logprobs": 0, "temperature": 0})
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    res = engine.generate("Once", max_new_tokens=5, temperature=0)
    assert len(c["logprobs"]["tokens"]) == len(res.tokens)
    ref = token_logprobs(model, torch.tensor([tok.encode("Once") + res.tokens]))[0, -len(res.tokens):].tolist()
    assert c["logprobs"]["token_logprobs"] == ref
    assert all(t == {} for t in c["logprobs"]["top_logprobs"])
    torch.testing.assert_close(torch.tensor(res.logprobs), torch.tensor(ref), atol=1e-4, rtol=0)


def test_tokenizer_routes(stack):
    server, engine, tok, _ = stack
    info = httpx.get(server.url + "/tokenizer_info").json()
    assert info["eos_token"] == "<|endofturn|>" and info["chat_template"] == tok.chat_template
    assert info["model_max_length"] == engine.config.max_position_embeddings
    r = _post(server, "/tokenize", {"prompt": "héllo <|endofturn|>", "add_special_tokens": False}).json()
    assert r["tokens"] == tok.encode("héllo <|endofturn|>") and r["count"] == len(r["tokens"])
    assert r["tokens"][-1] == tok.eos_id
    assert _post(server, "/detokenize", {"tokens": r["tokens"]}).json() == {"prompt": "héllo <|endofturn|>"}
    msgs = [{"role": "user", "content": "hi"}]
    r = _post(server, "/tokenize", {"messages": msgs}).json()
    assert r["tokens"] == tok.encode(chat_prompt(msgs)[0])


@pytest.mark.parametrize("path,body,param", [
    ("/v1/completions", {"prompt": "hi", "logprobs": 21}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": -1}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": "yes"}, "logprobs"),
    ("/v1/completions", {"prompt": "hi", "logprobs": 1, "stream": True}, "logprobs"),
    ("/v1/completions", {"prompt": ["a", "b"], "stream": True}, "prompt"),
    ("/v1/completions", {"prompt": [[1, 2]] * 65}, "prompt"),
    ("/v1/completions", {"prompt": [[5, 6], []], "max_tokens": 0, "echo": True}, "prompt"),
    ("/v1/completions", {"prompt": [[5, 10**6]], "max_tokens": 0, "echo": True}, "prompt"),
    ("/v1/completions", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}], "logprobs": True}, "logprobs"),
    ("/tokenize", {"add_special_tokens": False}, None),
    ("/tokenize", {"prompt": 5}, "prompt"),
    ("/detokenize", {"tokens": [1, -3]}, "tokens"),
    ("/detokenize", {"tokens": "abc"}, "tokens"),
])
def test_malformed_requests_get_400_naming_the_field(stack, path, body, param):
    server = stack[0]
    r = _post(server, path, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and err["message"], err
