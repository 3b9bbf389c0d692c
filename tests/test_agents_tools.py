"""Tool registry (schemas from hints and docstrings, checked against transformers' get_json_schema; validation) and
the BM25 document index (scores against a hand-written BM25, Korean bigrams, passages)."""

from __future__ import annotations

import math
from typing import Literal, Optional

import pytest

from kexaone.agents.search import DocumentIndex, SearchDoc, search_tokens, split_passages
from kexaone.agents.tools import ToolRegistry, function_schema, make_tool, parse_docstring, tool


def forecast(city: str, days: int = 3, unit: Optional[str] = None, tags: list[str] = None,
             detail: float = 0.5, hourly: bool = False) -> str:
    """Get the weather forecast
    for a city.

    Args:
        city: The city name.
        days: How many days
            ahead to look.
        unit: Celsius or fahrenheit.
        tags: Extra tags.
        detail: Level of detail.
        hourly: Hour by hour.

    Returns:
        The forecast.
    """
    return f"{city}:{days}"


def test_schema_matches_transformers_get_json_schema():
    get_json_schema = pytest.importorskip("transformers.utils").get_json_schema
    ref = get_json_schema(forecast)["function"]
    name, desc, params = function_schema(forecast)
    def flat(text):  # transformers keeps the docstring's line breaks; kexaone joins lines with spaces
        return " ".join(text.split())

    assert (name, desc) == (ref["name"], flat(ref["description"]))
    assert desc == "Get the weather forecast for a city."
    assert params["required"] == ref["parameters"]["required"] == ["city"]
    assert list(params["properties"]) == list(ref["parameters"]["properties"])
    for key, theirs in ref["parameters"]["properties"].items():
        ours = params["properties"][key]
        base = ours["type"][0] if isinstance(ours["type"], list) else ours["type"]
        assert base == theirs["type"], key
        assert ours["description"] == flat(theirs["description"]), key
        assert ours.get("items") == theirs.get("items"), key
        # transformers marks Optional with OpenAPI's `nullable`; JSON schema says it with a null type.
        assert ("null" in ours["type"]) == bool(theirs.get("nullable")) or ours.get("default", 0) is None, key
    assert params["properties"]["days"]["default"] == 3 and params["additionalProperties"] is False


def test_literal_and_errors():
    def pick(mode: Literal["a", "b"], n: int) -> str:
        """Pick."""
        return mode * n

    assert function_schema(pick)[2]["properties"]["mode"] == {"enum": ["a", "b"]}

    def shapes(a: tuple[int, ...], b: tuple[int, str], c: dict[str, int], d: float | None, e: int | str) -> None:
        """Shapes."""

    props = function_schema(shapes)[2]["properties"]
    assert props["a"] == {"type": "array", "items": {"type": "integer"}}
    assert props["b"] == {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}],
                          "minItems": 2, "maxItems": 2}
    assert props["c"] == {"type": "object"} and props["d"] == {"type": ["number", "null"]}
    assert props["e"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    reg = ToolRegistry()
    reg.register(shapes)
    assert reg.call("shapes", {"a": [1, 2], "b": [1, "x"], "c": {}, "d": None, "e": "s"}).ok
    assert "is too long" in reg.call("shapes", {"a": [], "b": [1, "x", 3], "c": {}, "d": 1.0, "e": 1}).error

    def bad(x: set) -> None:
        pass

    with pytest.raises(ValueError, match="cannot turn type hint"):
        function_schema(bad)

    def star(*args: int) -> None:
        pass

    with pytest.raises(ValueError, match=r"\*args/\*\*kwargs"):
        function_schema(star)
    with pytest.raises(ValueError, match="not a valid JSON schema"):
        make_tool(pick, parameters={"type": "object", "properties": {"mode": {"type": "strang"}}})
    with pytest.raises(ValueError, match="tool name '1x' is not valid"):
        make_tool(pick, name="1x")
    with pytest.raises(ValueError, match="kind must be one of"):
        make_tool(pick, kind="delete")
    reg = ToolRegistry()
    reg.register(pick)
    with pytest.raises(ValueError, match="already registered"):
        reg.register(pick)


def test_registry_call_validates_before_running():
    ran = []

    @tool(kind="write")
    def store(key: str, value: int, tags: list[str] = None) -> dict:
        """Store a value.

        Args:
            key: Where.
            value: What.
        """
        ran.append(key)
        if key == "boom":
            raise KeyError("no space left")
        return {"key": key, "value": value}

    reg = ToolRegistry()
    assert reg.register_marked([store, forecast]) == ["store"]
    assert reg.tools["store"].kind == "write"
    ok = reg.call("store", '{"key": "a", "value": 2}')  # JSON string, as on the wire
    assert ok.ok and ok.value == {"key": "a", "value": 2} and ok.content == '{"key": "a", "value": 2}'
    assert reg.call("store", {"key": "a", "value": 2, "tags": None}).ok  # `= None` admits null
    cases = {
        '{"key": "a"': "arguments of tool 'store' are not valid JSON",
        "[1, 2]": "arguments of tool 'store' must be a JSON object, got list",
        '{"key": "a"}': "invalid arguments for tool 'store' at (arguments): 'value' is a required property",
        '{"key": "a", "value": 1.5}': "invalid arguments for tool 'store' at value: 1.5 is not of type 'integer'",
        '{"key": "a", "value": 1, "tags": [3]}': "invalid arguments for tool 'store' at tags/0: 3 is not of type "
                                                 "'string'",
    }
    for args, msg in cases.items():
        r = reg.call("store", args)
        assert not r.ok and r.error.startswith(msg), (args, r.error)
        assert r.content == "Error: " + r.error
    assert ran == ["a", "a"]  # invalid calls never reached the function
    r = reg.call("store", {"key": "boom", "value": 1})
    assert not r.ok and r.error == "tool 'store' failed: KeyError: 'no space left'"


def test_parse_docstring_sections():
    desc, params = parse_docstring(forecast.__doc__)
    assert desc == "Get the weather forecast for a city."
    assert params["days"] == "How many days ahead to look." and "Returns" not in params


def test_search_tokens_korean_bigrams():
    assert search_tokens("서울에서 K-EXAONE을 썼다") == ["서울", "울에", "에서", "k", "exaone", "을", "썼다"]
    assert search_tokens("東京タワー") == ["東京", "京タ", "タワ", "ワー"]
    assert search_tokens("Ünïcode words, 42!") == ["ünïcode", "words", "42"]


def _bm25_ref(docs_tokens, query_tokens, k1=1.5, b=0.75):
    """Lucene BM25 (the bm25s default), written out: idf = ln(1 + (N - df + 0.5) / (df + 0.5)),
    tf part = tf / (tf + k1 (1 - b + b dl / avgdl)), summed over query terms (repeats counted)."""
    n = len(docs_tokens)
    avg = sum(map(len, docs_tokens)) / n
    out = []
    for d in docs_tokens:
        s = 0.0
        for q in query_tokens:
            df = sum(q in x for x in docs_tokens)
            if df == 0:
                continue
            tf = d.count(q)
            s += math.log(1 + (n - df + 0.5) / (df + 0.5)) * tf / (tf + k1 * (1 - b + b * len(d) / avg))
        out.append(s)
    return out


def test_bm25_scores_match_reference_and_korean_retrieval():
    texts = ["서울은 한국의 수도이다. 서울에는 많은 사람이 산다.", "부산은 항구 도시이다.",
             "Seoul is the capital; Seoul is large.", "Busan has a port and a beach."]
    index = DocumentIndex([SearchDoc(str(i), "", t, "test") for i, t in enumerate(texts)])
    for q in ("서울에서 사람", "Seoul port", "부산 항구 beach"):
        ref = _bm25_ref([search_tokens("\n" + t) for t in texts], search_tokens(q))
        assert index.scores(q).tolist() == pytest.approx(ref, rel=1e-5), q
    assert [h["doc"] for h in index.search("서울에서")] == ["0"]  # a particle-suffixed query still finds 서울
    assert [h["doc"] for h in index.search("port beach")] == ["3"]
    assert index.search("nothing matches zzz") == []
    with pytest.raises(ValueError, match="non-empty"):
        index.search("  ")


def test_passages_and_open_errors():
    text = "Intro line.\n\nThe launch was in 2019.\n\nCosts rose in 2021.\n\nThe end."
    index = DocumentIndex.from_texts([text, "other"])
    assert index.passages("0", "2019") == ["The launch was in 2019."]
    assert index.passages("0", r"20\d\d") == ["The launch was in 2019.", "Costs rose in 2021."]
    assert index.passages("0", "costs launch") == ["The launch was in 2019.", "Costs rose in 2021."]  # term overlap
    assert index.passages("0", "", max_passages=2) == ["Intro line.", "The launch was in 2019."]
    with pytest.raises(ValueError, match=r"unknown document '7'"):
        index.passages("7", "x")
    long = "A sentence here. " * 100
    parts = split_passages(long, max_chars=200)
    assert all(len(p) <= 200 for p in parts) and " ".join(parts).split() == long.split()


def test_index_reads_jsonl_and_parquet(tmp_path):
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.jsonl").write_text("\n".join(json.dumps({"body": t}, ensure_ascii=False) for t in
                                                ["Jeju is an island.", "부산은 항구 도시이다."]) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"body": ["Daejeon has a science park.", "Incheon has an airport."]}),
                   tmp_path / "b.parquet")
    index = DocumentIndex.from_sources([str(tmp_path / "a.jsonl"), str(tmp_path / "b.parquet")], text_field="body")
    assert len(index) == 4 and [d.source for d in index.docs] == [str(tmp_path / "a.jsonl")] * 2 + [
        str(tmp_path / "b.parquet")] * 2
    assert index.search("airport")[0]["doc"] == "3" and index.search("부산")[0]["doc"] == "1"
    with pytest.raises(ValueError, match="no 'text' field"):
        DocumentIndex.from_sources([str(tmp_path / "a.jsonl")])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        DocumentIndex.from_sources([str(tmp_path / "missing.txt")])
