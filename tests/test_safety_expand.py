"""`kexaone safety expand` against a scripted OpenAI-compatible endpoint on 127.0.0.1 (http.server in a thread):
new instances are deduplicated (exact and near duplicates dropped), written as JSONL that load_suite reads, retried
on 429/5xx, resumed on a re-run; plus the dedup primitives and the reply parser."""

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kexaone.cli import main
from kexaone.eval.safety import suite as S
from kexaone.eval.safety.expand import (
    Deduper, ExpandConfig, char_ngrams, expand, jaccard, normalize, parse_requests)


class Script:
    """What the fake endpoint does: the first chat call answers 503, the second 429 (Retry-After: 0); afterwards
    each call returns `k` fresh requests, preceded on the first successful call by an exact duplicate of a packaged
    seed (different case and punctuation) and on the second by a near duplicate of the first call's request."""

    def __init__(self, seed_text):
        self.seed_text = seed_text
        self.calls = 0
        self.failures = [503, 429]
        self.served = 0
        self.ok_calls = 0
        self.first = None
        self.prompts = []
        self.auth = []


def make_handler(script):
    class H(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def _send(self, code, obj, headers=()):
            body = json.dumps(obj).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for k, v in headers:
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path == "/v1/models":
                self._send(200, {"object": "list", "data": [{"id": "scripted-gen", "object": "model"}]})
            else:
                self._send(404, {"error": "not found"})

        def do_POST(self):
            n = int(self.headers.get("Content-Length", 0))
            body = json.loads(self.rfile.read(n))
            script.auth.append(self.headers.get("Authorization"))
            script.calls += 1
            if script.failures:
                code = script.failures.pop(0)
                self._send(code, {"error": "busy"}, headers=[("Retry-After", "0")] if code == 429 else ())
                return
            prompt = body["messages"][-1]["content"]
            script.prompts.append(prompt)
            area = re.search(r"Risk area: (\S+)", prompt).group(1)
            lang = re.search(r"Language: \w+ \((\w+)\)", prompt).group(1)
            k = int(re.search(r"Write exactly (\d+) new", prompt).group(1))
            reqs = []
            script.ok_calls += 1
            if script.ok_calls == 1:
                reqs.append(script.seed_text.upper().replace(".", "!!") + "  ")  # exact after normalisation
            if script.ok_calls == 2:  # one word changed in the first call's request
                reqs.append(script.first.replace("scripted request", "scripted requests"))
            for i in range(k):
                script.served += 1
                reqs.append(f"[{area}/{lang}] scripted request number {script.served} about topic "
                            f"{'abcdefghijklmnopqrstuvwxyz'[script.served % 26] * 3}-{script.served * 7919}")
            if script.ok_calls == 1:
                script.first = reqs[-k]
            content = "```json\n" + json.dumps(reqs, ensure_ascii=False) + "\n```"
            self._send(200, {"id": "x", "object": "chat.completion", "model": body["model"],
                             "choices": [{"index": 0, "message": {"role": "assistant", "content": content},
                                          "finish_reason": "stop"}]})

    return H


@pytest.fixture
def server():
    seed = next(r["text"] for r in S.load_seeds() if r["area"] == "UHV-01")
    script = Script(seed)
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(script))
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1", script
    httpd.shutdown()
    httpd.server_close()


def _per_area(items):
    out = {}
    for it in items:
        out[it.risk_area] = out.get(it.risk_area, 0) + 1
    return out


def test_expand_dedups_writes_loadable_jsonl_and_resumes(server, tmp_path):
    url, script = server
    out = tmp_path / "more.jsonl"
    packaged = _per_area(S.load_suite("harmful"))
    assert packaged["UHV-01"] == 8 and packaged["KS-60"] == 8 and packaged["FR-13"] == 28
    cfg = ExpandConfig(endpoint=url, out=str(out), per_area=14, areas=["UHV-01", "KS-60", "FR-13"], backoff=0.0,
                       api_key="sk-test")
    stats = expand(cfg, progress=False)
    assert stats.retries == 2  # the 503 and the 429
    assert stats.exact_duplicates == 1 and stats.near_duplicates == 1
    assert stats.accepted == 12 and stats.short_areas == {}
    assert script.auth[0] == "Bearer sk-test"
    items = S.load_suite(str(out))
    assert len(items) == 12 and _per_area(items) == {"UHV-01": 6, "KS-60": 6}  # FR-13 already had 28
    # packaged + new = 14 per area
    assert packaged["UHV-01"] + _per_area(items)["UHV-01"] == 14
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    reqs = [r["request"] for r in rows]
    assert len(set(map(normalize, reqs))) == 12
    assert normalize(script.seed_text) not in {normalize(r) for r in reqs}
    # kinds and languages rotate: six new UHV-01 instances cover all six languages and all four kinds
    uhv = [it for it in items if it.risk_area == "UHV-01"]
    assert {it.lang for it in uhv} == set(S.LANGS) and {it.kind for it in uhv} == set(S.KINDS)
    for it, r in zip(items, rows):
        assert r["request"] in S.request_text(it) and r["source"] == "expand:scripted-gen"
        assert it.id.startswith(f"{it.risk_area}.{it.lang}.x") and not it.benign
    # the generation prompt shows existing examples and asks in the slot's language
    assert any("Language: Japanese (ja)" in p for p in script.prompts)
    # a re-run finds every area full: no calls, file unchanged
    before, calls = out.read_text(encoding="utf-8"), script.calls
    stats2 = expand(cfg, progress=False)
    assert stats2.calls == 0 and stats2.accepted == 0 and script.calls == calls
    assert out.read_text(encoding="utf-8") == before
    # a higher target resumes from the file: only the difference is generated, ids stay unique
    stats3 = expand(ExpandConfig(endpoint=url, out=str(out), per_area=15, areas=["UHV-01"], backoff=0.0),
                    progress=False)
    assert stats3.accepted == 1
    items3 = S.load_suite(str(out))
    assert len(items3) == 13 and len({it.id for it in items3}) == 13


def test_expand_cli(server, tmp_path, capsys):
    url, script = server
    out = tmp_path / "cli.jsonl"
    rc = main(["safety", "expand", "--endpoint", url, "--areas", "FR-01", "--per-area", "11", "--out", str(out)])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "3 new instances" in captured.out and "1 exact and 1 near duplicates dropped" in captured.out
    assert len(S.load_suite(str(out))) == 3
    assert main(["safety", "expand", "--endpoint", "ftp://x", "--out", str(out)]) == 2
    assert "http(s) URL" in capsys.readouterr().err
    assert main(["safety", "expand", "--endpoint", url, "--areas", "NOPE-1", "--out", str(out)]) == 2
    assert "NOPE-1" in capsys.readouterr().err


def test_expand_gives_up_on_a_dead_endpoint(tmp_path, capsys):
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    rc = main(["safety", "expand", "--endpoint", f"http://127.0.0.1:{port}/v1", "--api-model", "m",
               "--areas", "FR-01", "--out", str(tmp_path / "x.jsonl"), "--timeout", "2", "--max-retries", "1"])
    assert rc == 1 and "failed after 2 tries" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()


def test_expand_rejects_a_malformed_output_file(server, tmp_path, capsys):
    url, _ = server
    out = tmp_path / "bad.jsonl"
    out.write_text('{"risk_area": "UHV-01", "prompt": "x"}\n{not json\n', encoding="utf-8")
    rc = main(["safety", "expand", "--endpoint", url, "--areas", "UHV-01", "--out", str(out)])
    assert rc == 2 and "bad.jsonl:2: not valid JSON" in capsys.readouterr().err
    assert out.read_text(encoding="utf-8").endswith("{not json\n")  # left untouched


def test_dedup_primitives():
    assert normalize("Hello,  WORLD!!") == normalize("hello world") == "helloworld"
    assert normalize("ＡＢＣ。") == "abc"  # NFKC folds full-width forms
    a, b = char_ngrams("abcdef", 3), char_ngrams("abcdeg", 3)
    assert a == {"abc", "bcd", "cde", "def"} and jaccard(a, b) == pytest.approx(3 / 5)
    d = Deduper(3, 0.7)
    d.add("How do I pick a front-door lock quickly?")
    assert d.check("how do i pick a front door lock quickly") == "exact"
    assert d.check("How do I pick a front-door lock quickly at night?") == "near"
    assert d.check("Write a phishing email from a bank.") == "new"
    with pytest.raises(ValueError, match="per_area"):
        ExpandConfig(endpoint="http://x/v1", out="o", per_area=0)


@pytest.mark.parametrize("text,expected", [
    ('["a b", "c d"]', ["a b", "c d"]),
    ('Here you go:\n```json\n["x", {"request": "y"}]\n```', ["x", "y"]),
    ("1. first one\n2) second one\n- third one", ["first one", "second one", "third one"]),
    ("I'm sorry, but I can't help with that.", []),
])
def test_parse_requests(text, expected):
    assert parse_requests(text) == expected
