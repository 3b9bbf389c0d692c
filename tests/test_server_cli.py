"""`kexaone serve` as a user runs it: a subprocess on 127.0.0.1 at a free port, loading a saved model directory,
answering /health and a chat completion, then stopped."""

from __future__ import annotations

import httpx
import pytest

from serve_support import serve_subprocess
from test_engine_models import byte_tokenizer, tiny_model


@pytest.mark.slow
def test_serve_command_end_to_end(tmp_path):
    tok = byte_tokenizer()
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(tmp_path)
    tok.save(tmp_path)
    with serve_subprocess(tmp_path, "--served-model-name", "cli-model", "--log-level", "warning",
                          "--max-tokens", "64") as url:
        assert httpx.get(url + "/v1/models").json()["data"][0]["id"] == "cli-model"
        r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "cli-model", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 8,
            "temperature": 0})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["usage"]["completion_tokens"] <= 8 and body["choices"][0]["finish_reason"] in ("stop", "length")
        r = httpx.post(url + "/v1/chat/completions", json={"messages": [], "max_tokens": 65})
        assert r.status_code == 400
        assert "<title>kexaone chat</title>" in httpx.get(url + "/").text
