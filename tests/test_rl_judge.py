"""LLM-as-a-judge rewards (kexaone.rl.judge) against a scripted local OpenAI-compatible endpoint."""

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from kexaone.rl.judge import (
    DEFAULT_RUBRIC,
    Rubric,
    RubricDimension,
    make_judge_reward,
    make_rubric_reward,
    parse_judge_rating,
)
from kexaone.rl.objectives import grouper_advantages
from kexaone.rl.rewards import combine_rewards


class _ScriptedJudge(BaseHTTPRequestHandler):
    """Answers /v1/chat/completions with `script(user_message)`; None from the script means HTTP 500."""

    script = staticmethod(lambda message: "Rating: [[5]]")
    requests: list = []

    def do_POST(self):  # noqa: N802 - http.server's naming
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"path": self.path, "body": body, "auth": self.headers.get("Authorization")})
        content = type(self).script(body["messages"][-1]["content"])
        if content is None:
            self.send_response(500)
            self.end_headers()
            return
        payload = json.dumps({"id": "x", "object": "chat.completion", "model": body["model"],
                              "choices": [{"index": 0, "finish_reason": "stop",
                                           "message": {"role": "assistant", "content": content}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_endpoint():
    _ScriptedJudge.requests = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _ScriptedJudge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def _answer_of(message: str) -> str:
    return message.split("[The Start of Assistant's Answer]\n", 1)[1].split("\n[The End", 1)[0]


def test_parse_judge_rating():
    assert parse_judge_rating("Good answer. Rating: [[7]]") == pytest.approx(6 / 9)
    assert parse_judge_rating("Rating: [[3]] ... corrected Rating: [[10]]") == 1.0
    assert parse_judge_rating("Rating: 1") == 0.0
    assert parse_judge_rating("I give it 5.5/10") == pytest.approx(4.5 / 9)
    assert parse_judge_rating("[[12]]") == 1.0  # clamped
    assert parse_judge_rating("[[4]]", scale=(0, 4)) == 1.0
    assert parse_judge_rating("no rating here") is None
    with pytest.raises(ValueError, match="best > worst"):
        parse_judge_rating("[[1]]", scale=(5, 5))


def test_judge_reward_against_scripted_endpoint(judge_endpoint):
    def script(message):
        answer = _answer_of(message)
        if "CRASH" in answer:
            return None
        return ("Helpful. Rating: [[9]]" if "GOOD" in answer else
                "Unhelpful. Rating: [[2]]" if "BAD" in answer else "I cannot decide.")

    _ScriptedJudge.script = staticmethod(script)
    judge = make_judge_reward(judge_endpoint, "judge-model", api_key="k", workers=2)
    assert judge.__name__ == "judge"
    completions = ["GOOD reply", "<think>x</think>BAD reply", "meh", "CRASH"]
    prompts = ["What is 2+2?", [{"role": "user", "content": "Hi?"}], "q", "q"]
    rewards = judge(prompts, completions, reference=["4", None, None, None])
    assert rewards == [pytest.approx(8 / 9), pytest.approx(1 / 9), None, None]
    requests = _ScriptedJudge.requests
    assert len(requests) == 4
    assert all(r["path"] == "/v1/chat/completions" and r["auth"] == "Bearer k" for r in requests)
    assert all(r["body"]["model"] == "judge-model" and r["body"]["temperature"] == 0.0 for r in requests)
    sent = {_answer_of(r["body"]["messages"][0]["content"]): r["body"]["messages"][0]["content"] for r in requests}
    assert "[Question]\nWhat is 2+2?" in sent["GOOD reply"] and "[Reference Answer]\n4" in sent["GOOD reply"]
    assert "[Question]\nHi?" in sent["BAD reply"] and "Reference" not in sent["BAD reply"]
    with pytest.raises(ValueError, match="2 prompts for 1 completions"):
        judge(["a", "b"], ["c"])


def test_judge_errors():
    with pytest.raises(ValueError, match=r"\{completion\}"):
        make_judge_reward("http://x/v1", "m", template="{prompt} only")
    # An endpoint nobody listens on: every call fails softly as "not applicable".
    judge = make_judge_reward("http://127.0.0.1:9/v1", "m", timeout_s=2.0)
    assert judge(["q"], ["a"]) == [None]


RUBRIC = Rubric(
    dimensions=(RubricDimension("helpfulness", "Is it useful?", 2.0), RubricDimension("safety", "Is it safe?", 1.0)),
    scale=(0, 10),
)


def test_rubric_message_and_parse():
    message = RUBRIC.message("Plan my trip", "Go to Busan.", reference="Busan")
    assert "- helpfulness: Is it useful?" in message and "- safety: Is it safe?" in message
    assert '{"helpfulness": 10, "safety": 10}' in message and "from 0 (worst) to 10 (best)" in message
    assert "[User Request]\nPlan my trip" in message and "[Reference Answer]\nBusan" in message
    assert RUBRIC.parse('Thoughts {not json}.\n{"helpfulness": 8, "safety": 5}') == {"helpfulness": 0.8, "safety": 0.5}
    # The last complete object wins; objects missing a dimension or with non-numbers are skipped.
    assert RUBRIC.parse('{"helpfulness": 2, "safety": 2} then {"helpfulness": 9}') == {"helpfulness": 0.2,
                                                                                       "safety": 0.2}
    assert RUBRIC.parse('{"helpfulness": "high", "safety": 3}') is None
    assert RUBRIC.parse('{"helpfulness": 14, "safety": -1}') == {"helpfulness": 1.0, "safety": 0.0}
    assert RUBRIC.combine({"helpfulness": 0.8, "safety": 0.5}) == pytest.approx((2 * 0.8 + 0.5) / 3)
    strict = Rubric(RUBRIC.dimensions, scale=(0, 10), aggregate="min")
    assert strict.combine({"helpfulness": 0.8, "safety": 0.5}) == 0.5


def test_rubric_file_and_errors(tmp_path):
    path = tmp_path / "rubric.json"
    path.write_text(json.dumps({"scale": [1, 5], "aggregate": "min", "dimensions": [
        {"name": "tone", "description": "Polite?"}, {"name": "facts", "description": "Correct?", "weight": 3}]}))
    rubric = Rubric.load(path)
    assert rubric.scale == (1.0, 5.0) and rubric.aggregate == "min"
    assert [(d.name, d.weight) for d in rubric.dimensions] == [("tone", 1.0), ("facts", 3.0)]
    assert len(DEFAULT_RUBRIC.dimensions) == 5
    with pytest.raises(FileNotFoundError, match="rubric file not found"):
        Rubric.load(tmp_path / "missing.json")
    path.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        Rubric.load(path)
    with pytest.raises(ValueError, match="unknown rubric keys \\['scales'\\]"):
        Rubric.from_dict({"dimensions": [], "scales": [1, 2]})
    with pytest.raises(ValueError, match="at least one dimension"):
        Rubric.from_dict({"dimensions": []})
    with pytest.raises(ValueError, match="needs a name and a description"):
        Rubric.from_dict({"dimensions": [{"name": "x"}]})
    with pytest.raises(ValueError, match="must be an identifier"):
        Rubric((RubricDimension("two words", "d"),))
    with pytest.raises(ValueError, match="names repeat"):
        Rubric((RubricDimension("a", "d"), RubricDimension("a", "e")))
    with pytest.raises(ValueError, match="weights sum to 0"):
        Rubric((RubricDimension("a", "d", 0.0),))
    with pytest.raises(ValueError, match="aggregate"):
        Rubric((RubricDimension("a", "d"),), aggregate="max")


def test_rubric_reward_known_group_end_to_end(judge_endpoint):
    # A known group of 4 replies, scored by a scripted rubric judge and a rule reward, combined with weights, then
    # turned into GROUPER advantages: every number is checked against a hand computation.
    scores = {"A": (9, 10), "B": (4, 10), "C": (7, 0), "D": None}  # (helpfulness, safety); D: judge error

    def script(message):
        s = scores[_answer_of(message)[0]]
        return None if s is None else f'Reasoning...\n{{"helpfulness": {s[0]}, "safety": {s[1]}}}'

    _ScriptedJudge.script = staticmethod(script)
    rubric_reward = make_rubric_reward(judge_endpoint, "judge", RUBRIC, workers=3)
    assert rubric_reward.__name__ == "rubric"

    def short_reward(prompts, completions, **columns):  # a rule reward: 1 when the reply is under 10 characters
        return [float(len(c) < 10) for c in completions]

    completions = ["A: fine", "B: a long detailed reply", "C: unsafe", "D: ok"]
    total, per = combine_rewards([(rubric_reward, 3.0), (short_reward, 1.0)], ["p"] * 4, completions)
    rubric_values = [(2 * 0.9 + 1.0) / 3, (2 * 0.4 + 1.0) / 3, (2 * 0.7 + 0.0) / 3, None]
    assert per["rubric"][:3] == pytest.approx(rubric_values[:3]) and per["rubric"][3] is None
    assert per["short_reward"] == [1.0, 0.0, 1.0, 1.0]
    expected = [(3 * rubric_values[0] + 1) / 4, (3 * rubric_values[1]) / 4, (3 * rubric_values[2] + 1) / 4, 1.0]
    assert total == pytest.approx(expected)
    assert rubric_reward.last_dimension_scores == [
        {"helpfulness": 0.9, "safety": 1.0}, {"helpfulness": 0.4, "safety": 1.0},
        {"helpfulness": 0.7, "safety": 0.0}, None]
    advantages = grouper_advantages([total])[0].tolist()
    lo, hi = min(expected), max(expected)
    assert advantages == pytest.approx([2 * (x - lo) / (hi - lo) - 1 for x in expected])
