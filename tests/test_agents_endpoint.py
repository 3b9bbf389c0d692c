"""A local OpenAI-compatible chat endpoint for the agent and tool-environment tests (no test functions here).

`ChatEndpoint(respond)` serves `/v1/models` and `/v1/chat/completions` on 127.0.0.1 at a free port, from a
background thread; `respond(request_body) -> assistant message dict` (content, optional tool_calls with JSON-string
arguments, optional reasoning_content) decides each reply, and every request body is kept in `requests`.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

USAGE = {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}


class ChatEndpoint:
    def __init__(self, respond: Callable[[dict], dict], usage: dict | None = None):
        self.requests: list[dict] = []
        outer = self
        usage = dict(usage or USAGE)

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def _send(self, code: int, obj: dict) -> None:
                data = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"object": "list", "data": [{"id": "scripted", "object": "model"}]})
                else:
                    self._send(404, {"error": {"message": "not found"}})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                outer.requests.append(body)
                try:
                    message = respond(body)
                except Exception as e:  # a script error becomes a 400 the test sees, not a hung client
                    return self._send(400, {"error": {"message": f"{type(e).__name__}: {e}"}})
                finish = "tool_calls" if message.get("tool_calls") else "stop"
                self._send(200, {"id": "x", "object": "chat.completion", "model": "scripted",
                                 "choices": [{"index": 0, "message": {"role": "assistant", **message},
                                              "finish_reason": finish}], "usage": usage})

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> ChatEndpoint:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def wire_call(name: str, args: dict, call_id: str) -> dict:
    """An OpenAI tool call as it travels: arguments as a JSON string."""
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": json.dumps(args)}}
