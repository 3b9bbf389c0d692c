"""`kexaone serve` as a user runs it: a subprocess on 127.0.0.1 at a free port, loading a saved model directory,
answering /health and a chat completion, then stopped."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

from test_engine_models import byte_tokenizer, tiny_model


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_serve_command_end_to_end(tmp_path):
    tok = byte_tokenizer()
    tiny_model(0, vocab_size=tok.vocab_size).save_pretrained(tmp_path)
    tok.save(tmp_path)
    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "kexaone", "serve", "--model", str(tmp_path), "--port", str(port),
                             "--served-model-name", "cli-model", "--log-level", "warning", "--max-tokens", "64"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kexaone serve exited early:\n{proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("kexaone serve did not come up within 90 s")
            time.sleep(0.3)
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
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
