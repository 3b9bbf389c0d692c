"""A scripted OpenAI-compatible server for tests: replies are known per prompt, failures can be injected.

`ScriptedServer()` starts a ThreadingHTTPServer on 127.0.0.1 (a free port) in a daemon thread; `.url` is its root.
- chat: the reply is the value of the longest key of `chat` contained in the last user message (or `chat_fn(text)`,
  else `chat_body_fn(text, request body)`, when it returns a value); a value may be a string or a dict with
  content / reasoning_content / tool_calls.
- completions: likewise from `completions`; with `echo` and `logprobs`, every character of the prompt is one token
  whose log-prob is `char_logprob(c)` (-0.1 for capitals, -1.0 otherwise; None for the first), plus one generated
  token "x", unless `logprobs_enabled` is False (then `logprobs` is null, as servers without support answer).
- `fail`: status codes returned, in order, before requests succeed again; `api_key`: required bearer key.
- `tokenize`: when True, `POST /tokenize` (vLLM's route, at the root) counts one token per UTF-8 byte.
- `requests`: (path, body) of every request received.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def char_logprob(c: str) -> float:
    return -0.1 if c.isupper() else -1.0


class ScriptedServer:
    def __init__(self, model: str = "scripted", max_model_len: int = 8192):
        self.model = model
        self.max_model_len = max_model_len
        self.chat: dict[str, object] = {}
        self.chat_fn = None
        self.chat_body_fn = None
        self.completions: dict[str, str] = {}
        self.fail: list[int] = []
        self.api_key: str | None = None
        self.logprobs_enabled = True
        self.tokenize = False
        self.generated_offset_shift = 0
        """Added to the generated token's text_offset (-1 mimics a partial UTF-8 byte token, which has no text)."""
        self.requests: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _gate(self, path: str, body: dict) -> bool:
                with server.lock:
                    server.requests.append((path, body))
                    code = server.fail.pop(0) if server.fail else None
                if server.api_key is not None and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._send(401, {"error": {"message": "invalid api key", "type": "auth"}})
                    return False
                if code is not None:
                    self._send(code, {"error": {"message": f"scripted failure {code}"}})
                    return False
                return True

            def do_GET(self):
                if not self._gate(self.path, {}):
                    return
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": server.model, "object": "model",
                                                                 "max_model_len": server.max_model_len}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                n = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(n) or b"{}")
                if not self._gate(self.path, body):
                    return
                if self.path == "/v1/chat/completions":
                    self._send(200, server._chat(body))
                elif self.path == "/v1/completions":
                    self._send(200, server._completion(body))
                elif self.path == "/tokenize" and server.tokenize:
                    self._send(200, {"count": len(body["prompt"].encode("utf-8")), "tokens": []})
                else:
                    self._send(404, {"error": {"message": "not found"}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _lookup(table: dict, text: str):
        hits = [k for k in table if k in text]
        return table[max(hits, key=len)] if hits else None

    def _chat(self, body: dict) -> dict:
        users = [m for m in body["messages"] if m["role"] == "user"]
        text = users[-1]["content"] if users else ""
        reply = self.chat_fn(text) if self.chat_fn is not None else None
        if reply is None and self.chat_body_fn is not None:
            reply = self.chat_body_fn(text, body)
        if reply is None:
            reply = self._lookup(self.chat, text)
        if reply is None:
            reply = ""
        msg = {"role": "assistant", "content": reply} if isinstance(reply, str) else {"role": "assistant", **reply}
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": self.model,
                "choices": [{"index": 0, "message": msg, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": len(text), "completion_tokens": len(msg.get("content") or ""),
                          "total_tokens": 0}}

    def _completion(self, body: dict) -> dict:
        prompt = body["prompt"]
        if body.get("echo") and body.get("logprobs") is not None:
            if not self.logprobs_enabled:
                choice = {"index": 0, "text": prompt + "x", "finish_reason": "length", "logprobs": None}
            else:
                toks = list(prompt) + ["x"]
                lps = [None] + [char_logprob(c) for c in prompt[1:]] + [-0.5]
                choice = {"index": 0, "text": prompt + "x", "finish_reason": "length",
                          "logprobs": {"tokens": toks, "token_logprobs": lps,
                                       "text_offset": list(range(len(prompt))) + [len(prompt) + self.generated_offset_shift],
                                          "top_logprobs": None}}
        else:
            text = self._lookup(self.completions, prompt) or ""
            choice = {"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}
        return {"id": "t1", "object": "text_completion", "created": 0, "model": self.model, "choices": [choice]}
