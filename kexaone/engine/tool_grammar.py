"""The grammar of a forced tool-call reply, as a pushdown automaton over symbols (bytes 0-255 and special tokens).

A reply under `tool_choice` "required" or a named function is, in the K-EXAONE chat format:

    [reasoning text</think>\\n\\n]<tool_call>{"name": "<NAME>", "arguments": <ARGS>}</tool_call>
        [\\n<tool_call>...</tool_call>]* <|endofturn|>

The reasoning part exists only in reasoning mode (the generation prompt opened `<think>`); NAME is one of the
allowed functions; ARGS is a JSON object guided by that function's JSON schema: declared properties only, each at
most once, every required one before the closing brace, values of the declared type (string, number, integer,
boolean, null, enum/const literals, arrays of typed items, nested objects; `anyOf`/`oneOf`/type lists whose
branches start with different characters). Anything else (`$ref`, patterns, lengths, overlapping unions) falls
back to any JSON value, and the server's jsonschema check reports what the grammar let through. Separators are
json.dumps' (`": "` and `", "`), the spelling the chat template renders and SFT data teaches.

States are tuples of immutable frames (hashable), so a token's effect can be simulated from any state and masks
cached per state. `needed(state)` is the length in symbols of the shortest way to finish the reply from that
state; the processor (constrained.py) uses it to keep every reply finishable within the token budget, since every
byte and special token is a single token in a byte-level vocabulary.

Inside strings and reasoning, the byte spellings of tags the reply parser cuts at (`</tool_call>` and
`<|endofturn|>` in strings; `</think>` and `<|endofturn|>` in reasoning) are refused, so what the automaton accepts
parses back as the same calls. This module knows nothing of tokenizers or tensors.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

ARGS_SEP = b', "arguments": '
NAME_PREFIX = b'{"name": '
STR_GUARD = (b"</tool_call>", b"<|endofturn|>")
THINK_GUARD = (b"</think>", b"<|endofturn|>")
DIGITS = frozenset(b"0123456789")
MAX_SCHEMA_DEPTH = 8


def _dump(v) -> bytes:
    return json.dumps(v, ensure_ascii=False).encode("utf-8")


class Node:
    """A compiled JSON-schema node. kind: any, string, number, integer, literal, object, array, union."""

    __slots__ = ("kind", "lits", "props", "required", "items", "branches", "minlen", "keys")

    def __init__(self, kind: str, lits: tuple = (), props: dict | None = None, required: tuple = (),
                 items: "Node | None" = None, branches: tuple = ()):
        self.kind, self.lits, self.props, self.required = kind, lits, props, required
        self.items, self.branches = items, branches
        # quoted key bytes -> property name (declared objects)
        self.keys = {tuple(_dump(k)): k for k in props} if props else {}
        self.minlen = self._minlen()

    def _minlen(self) -> int:
        """Symbols of the shortest JSON text this node accepts."""
        k = self.kind
        if k in ("any", "number", "integer"):
            return 1  # 0
        if k == "string":
            return 2
        if k == "literal":
            return min(len(x) for x in self.lits)
        if k == "array":
            return 2
        if k == "union":
            return min(b.minlen for b in self.branches)
        if k == "object":
            if not self.props or not self.required:
                return 2
            return 2 + sum(_entry(self, r) for r in self.required) + 2 * (len(self.required) - 1)
        raise AssertionError(k)

    def first_bytes(self) -> frozenset:
        k = self.kind
        if k == "string":
            return frozenset(b'"')
        if k in ("number", "integer"):
            return frozenset(b"-") | DIGITS
        if k == "literal":
            return frozenset(x[0] for x in self.lits)
        if k == "object":
            return frozenset(b"{")
        if k == "array":
            return frozenset(b"[")
        if k == "union":
            return frozenset().union(*(b.first_bytes() for b in self.branches))
        return frozenset(b'"{[-tfn') | DIGITS


def _entry(node: Node, key: str) -> int:
    """Symbols of `"key": <shortest value>`."""
    return len(_dump(key)) + 2 + node.props[key].minlen


ANY = Node("any")
FREE_OBJECT = Node("object")


def compile_schema(schema, depth: int = 0) -> Node:
    """A JSON schema (dict) as a grammar node; unsupported parts become ANY (see the module docstring)."""
    if not isinstance(schema, dict) or depth > MAX_SCHEMA_DEPTH:
        return ANY
    if "const" in schema:
        return Node("literal", lits=(tuple(_dump(schema["const"])),))
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return Node("literal", lits=tuple(dict.fromkeys(tuple(_dump(v)) for v in schema["enum"])))
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _union([compile_schema(s, depth + 1) for s in schema[key]])
    t = schema.get("type")
    if isinstance(t, list):
        return _union([compile_schema({**schema, "type": x}, depth + 1) for x in t]) if t else ANY
    if t == "object" or (t is None and isinstance(schema.get("properties"), dict)):
        props = schema.get("properties")
        if not isinstance(props, dict) or not props:
            return FREE_OBJECT
        compiled = {str(k): compile_schema(v, depth + 1) for k, v in props.items()}
        req = schema.get("required") if isinstance(schema.get("required"), list) else []
        return Node("object", props=compiled, required=tuple(dict.fromkeys(r for r in req if r in compiled)))
    if t == "array":
        return Node("array", items=compile_schema(schema.get("items"), depth + 1))
    if t == "string":
        return Node("string")
    if t in ("number", "integer"):
        return Node(t)
    if t == "boolean":
        return Node("literal", lits=(tuple(b"true"), tuple(b"false")))
    if t == "null":
        return Node("literal", lits=(tuple(b"null"),))
    return ANY


def _union(branches: list[Node]) -> Node:
    if any(b.kind == "any" for b in branches):
        return ANY
    kinds = {b.kind for b in branches}
    if kinds == {"integer", "number"}:
        return Node("number")
    seen: set = set()
    for b in branches:
        fb = b.first_bytes()
        if seen & fb:
            return ANY  # branches not told apart by their first character
        seen |= fb
    return branches[0] if len(branches) == 1 else Node("union", branches=tuple(branches))


def _guard_step(guard: bytes, b: int, tags: Sequence[bytes]) -> bytes | None:
    """The longest suffix of guard+b that starts a tag; None when guard+b ends with a whole tag."""
    s = guard + bytes([b])
    for tag in tags:
        if s.endswith(tag):
            return None
    for n in range(min(len(s), max(len(t) for t in tags) - 1), 0, -1):
        if any(t.startswith(s[-n:]) for t in tags):
            return s[-n:]
    return b""


class ToolGrammar:
    """The reply automaton for a set of allowed functions.

    `functions`: name -> JSON schema of the arguments (None = any object); `max_calls`: most calls in one reply;
    `reasoning`: the reply starts inside the think block. `specials`: name -> symbol of the special tokens
    `</think>`, `<tool_call>`, `</tool_call>`, `<|endofturn|>` (symbols >= 256)."""

    def __init__(self, functions: dict[str, dict | None], specials: dict[str, int], max_calls: int = 1,
                 reasoning: bool = False):
        if not functions:
            raise ValueError("a tool grammar needs at least one function")
        if max_calls < 1:
            raise ValueError(f"max_calls must be >= 1, got {max_calls}")
        self.think_close, self.call_open = specials["</think>"], specials["<tool_call>"]
        self.call_close, self.eot = specials["</tool_call>"], specials["<|endofturn|>"]
        self.max_calls = max_calls
        self.reasoning = reasoning
        self.args: dict[str, Node] = {}
        for name, schema in functions.items():
            node = compile_schema(schema) if schema else FREE_OBJECT
            if node.kind != "object":  # tool arguments are always an object
                node = FREE_OBJECT
            self.args[name] = node
        self.names = {tuple(_dump(n)): n for n in functions}
        # after the name: `, "arguments": ` ARGS `}` `</tool_call>`
        self._after_name = {n: len(ARGS_SEP) + self.args[n].minlen + 2 for n in functions}
        self.call_min = 1 + len(NAME_PREFIX) + min(len(q) + self._after_name[n] for q, n in self.names.items())
        self._needed: dict = {}

    # ------------------------------------------------------------------ states
    def initial(self) -> tuple:
        return (("reply", "think" if self.reasoning else "call", b"", 0, None),)

    def is_final(self, state: tuple) -> bool:
        return state[-1][0] == "reply" and state[-1][1] == "done"

    def stable_class(self, state: tuple) -> str | None:
        """'str' or 'think' when every byte outside that class's set leaves `state` unchanged."""
        top = state[-1]
        if top[0] == "str" and top[1] == 0 and top[2] == b"":
            return "str"
        if top[0] == "reply" and top[1] == "think" and top[2] == b"":
            return "think"
        return None

    UNSTABLE = {"str": frozenset(b'"\\<') | frozenset(range(32)), "think": frozenset(b"<")}

    def feed(self, state: tuple, sym: int) -> tuple | None:
        """The state after `sym`, or None when the grammar refuses it."""
        for _ in range(16):
            top = state[-1]
            if sym > 255 and top[0] != "reply":  # special tokens only ever come between JSON texts
                return None
            r = getattr(self, "_" + top[0])(top, sym)
            if r is None:
                return None
            frames, done, value, refeed = r
            state = state[:-1] + frames
            if done:
                parent = state[-1]
                state = state[:-1] + getattr(self, "_ret_" + parent[0])(parent, value)
            if not refeed:
                return state
        return None

    def feed_all(self, state: tuple | None, syms: Sequence[int]) -> tuple | None:
        for s in syms:
            if state is None:
                return None
            state = self.feed(state, s)
        return state

    def needed(self, state: tuple) -> int:
        """Symbols of the shortest completion of the reply from `state` (0 when it is final)."""
        n = self._needed.get(state)
        if n is None:
            n = sum(self._rest(f) for f in state)
            if len(self._needed) < 200_000:
                self._needed[state] = n
        return n

    # ------------------------------------------------------------------ frames: step functions
    # Each returns None (refused) or (frames replacing the top, top finished?, value for the parent, feed the
    # symbol again to the new top?).
    @staticmethod
    def _lit(f, sym):
        _, cands, pos, extras = f
        live = [(c, e) for c, e in zip(cands, extras) if pos < len(c) and c[pos] == sym]
        if live:
            done = [c for c, _ in live if len(c) == pos + 1]
            if done and len(live) == 1:
                return (), True, done[0], False
            return (("lit", tuple(c for c, _ in live), pos + 1, tuple(e for _, e in live)),), False, None, False
        complete = [c for c in cands if len(c) == pos]
        if complete:  # a shorter candidate ended here (1 vs 10): give the symbol to the parent
            return (), True, complete[0], True
        return None

    @staticmethod
    def _str(f, sym):
        _, esc, guard = f
        if sym > 255:
            return None
        if esc == -1:  # after a backslash
            if sym in b'"\\/bfnrt':
                return (("str", 0, b""),), False, None, False
            if sym == ord("u"):
                return (("str", 4, b""),), False, None, False
            return None
        if esc > 0:
            if sym in b"0123456789abcdefABCDEF":
                return (("str", esc - 1, b""),), False, None, False
            return None
        if sym == 0x22:
            return (), True, None, False
        if sym == 0x5C:
            return (("str", -1, b""),), False, None, False
        if sym < 0x20:
            return None
        g = _guard_step(guard, sym, STR_GUARD) if (guard or sym == 0x3C) else b""
        if g is None:
            return None
        return (("str", 0, g),), False, None, False

    @staticmethod
    def _num(f, sym):
        _, phase, integer = f
        isd = sym in DIGITS
        nxt = None
        if phase == 0:
            nxt = 1 if sym == 0x2D else (2 if sym == 0x30 else (3 if isd else None))
        elif phase == 1:
            nxt = 2 if sym == 0x30 else (3 if isd else None)
        elif phase in (2, 3):
            if isd and phase == 3:
                nxt = 3
            elif not integer and sym == 0x2E:
                nxt = 4
            elif not integer and sym in b"eE":
                nxt = 6
        elif phase in (4, 5):
            nxt = 5 if isd else (6 if phase == 5 and sym in b"eE" else None)
        elif phase == 6:
            nxt = 7 if sym in b"+-" else (8 if isd else None)
        elif phase in (7, 8):
            nxt = 8 if isd else None
        if nxt is not None:
            return (("num", nxt, integer),), False, None, False
        if phase in (2, 3, 5, 8):  # a complete number ends at the first symbol that cannot extend it
            return (), True, None, True
        return None

    def _val(self, f, sym):
        node = f[1]
        if node.kind == "union":
            for b in node.branches:
                if sym in b.first_bytes():
                    node = b
                    break
            else:
                return None
        k = node.kind
        if k == "any":  # the first symbol decides the type (module-level nodes: states compare by identity)
            node = {0x22: _STRING, 0x7B: FREE_OBJECT, 0x5B: _ANY_ARRAY}.get(sym)
            if node is None:
                if sym == 0x2D or sym in DIGITS:
                    node = _NUMBER
                elif sym in b"tfn":
                    node = _ANY_LITERAL
                else:
                    return None
            k = node.kind
        if k == "string":
            return ((("str", 0, b""),), False, None, False) if sym == 0x22 else None
        if k in ("number", "integer"):
            return (("num", 0, k == "integer"),), False, None, True
        if k == "literal":
            return (("lit", node.lits, 0, (0,) * len(node.lits)),), False, None, True
        if k == "object":
            return ((("obj", node, "open", frozenset(), None),), False, None, False) if sym == 0x7B else None
        if k == "array":
            return ((("arr", node, "open"),), False, None, False) if sym == 0x5B else None
        return None

    def _obj(self, f, sym):
        _, node, phase, seen, cur = f
        declared = bool(node.props)
        missing = [r for r in node.required if r not in seen]
        if phase in ("open", "key"):
            if sym == 0x7D and phase == "open" and not missing:
                return (), True, None, False
            if sym != 0x22:
                return None
            if not declared:
                return (("obj", node, "colon", seen, None), ("str", 0, b"")), False, None, False
            keys = [(q, k) for q, k in node.keys.items() if k not in seen]
            if not keys:
                return None
            extras = tuple(2 + node.props[k].minlen + self._after_tail(node, seen | {k}) for _, k in keys)
            key = ("lit", tuple(q for q, _ in keys), 0, extras)
            return (("obj", node, "colon", seen, None), key), False, None, True
        if phase == "colon":
            return ((("obj", node, "colon_sp", seen, cur),), False, None, False) if sym == 0x3A else None
        if phase == "colon_sp":
            if sym != 0x20:
                return None
            value = node.props[cur] if declared else ANY
            return (("obj", node, "after", seen | {cur} if declared else seen, None), ("val", value)), \
                False, None, False
        if phase == "after":
            if sym == 0x7D and not missing:
                return (), True, None, False
            if sym == 0x2C and (not declared or len(seen) < len(node.props)):
                return (("obj", node, "comma", seen, None),), False, None, False
            return None
        if phase == "comma":
            return ((("obj", node, "key", seen, None),), False, None, False) if sym == 0x20 else None
        return None

    @staticmethod
    def _ret_obj(f, value):
        _, node, phase, seen, _ = f
        if phase == "colon":  # a key: value is its quoted bytes (declared) or None (free)
            return (("obj", node, "colon", seen, node.keys[value] if node.props else ""),)
        return (f,)  # a value returned; the phase was set when it was pushed

    def _arr(self, f, sym):
        _, node, phase = f
        if phase in ("open", "after") and sym == 0x5D:
            return (), True, None, False
        if phase == "open":
            return (("arr", node, "after"), ("val", node.items)), False, None, True
        if phase == "after":
            return ((("arr", node, "comma"),), False, None, False) if sym == 0x2C else None
        if phase == "comma" and sym == 0x20:
            return (("arr", node, "after"), ("val", node.items)), False, None, False
        return None

    @staticmethod
    def _ret_arr(f, value):
        return (f,)

    def _reply(self, f, sym):
        _, phase, guard, ncalls, name = f
        if phase == "think":
            if sym == self.think_close:
                return (("reply", "nl", b"", 0, None), ("lit", (tuple(b"\n\n"),), 0, (0,))), False, None, False
            if sym > 255:
                return None
            g = _guard_step(guard, sym, THINK_GUARD) if (guard or sym == 0x3C) else b""
            return None if g is None else ((("reply", "think", g, 0, None),), False, None, False)
        if phase == "call":
            if sym != self.call_open:
                return None
            return (("reply", "name_pre", b"", ncalls, None), ("lit", (tuple(NAME_PREFIX),), 0, (0,))), \
                False, None, False
        if phase == "end_call":
            return ((("reply", "next", b"", ncalls + 1, None),), False, None, False) \
                if sym == self.call_close else None
        if phase == "next":
            if sym == self.eot:
                return (("reply", "done", b"", ncalls, None),), False, None, False
            if sym == 0x0A and ncalls < self.max_calls:
                return (("reply", "call", b"", ncalls, None),), False, None, False
            return None
        return None

    def _ret_reply(self, f, value):
        _, phase, _, ncalls, name = f
        if phase == "nl":
            return (("reply", "call", b"", ncalls, None),)
        if phase == "name_pre":
            quoted = tuple(self.names)
            extras = tuple(self._after_name[self.names[q]] for q in quoted)
            return ("reply", "name", b"", ncalls, None), ("lit", quoted, 0, extras)
        if phase == "name":
            name = self.names[value]
            return ("reply", "args_pre", b"", ncalls, name), ("lit", (tuple(ARGS_SEP),), 0, (0,))
        if phase == "args_pre":
            return ("reply", "args", b"", ncalls, name), ("val", self.args[name])
        if phase == "args":
            return ("reply", "close", b"", ncalls, name), ("lit", (tuple(b"}"),), 0, (0,))
        if phase == "close":
            return (("reply", "end_call", b"", ncalls, None),)
        raise AssertionError(phase)

    # ------------------------------------------------------------------ shortest completions
    @staticmethod
    def _after_tail(node: Node, seen) -> int:
        """Symbols to close an object after a value: `, "k": v` per missing required key, then `}`."""
        return sum(2 + _entry(node, r) for r in node.required if r not in seen) + 1

    def _rest(self, f) -> int:
        kind = f[0]
        if kind == "lit":
            _, cands, pos, extras = f
            return min(len(c) - pos + e for c, e in zip(cands, extras))
        if kind == "str":
            return 1 if f[1] == 0 else (2 if f[1] == -1 else f[1] + 1)
        if kind == "num":
            return 0 if f[1] in (2, 3, 5, 8) else 1
        if kind == "val":
            return f[1].minlen
        if kind == "arr":
            return 1 if f[2] != "comma" else f[1].items.minlen + 2
        if kind == "obj":
            _, node, phase, seen, cur = f
            if not node.props:  # free object: `"": 0}` at most
                return {"open": 1, "key": 6, "colon": 4, "colon_sp": 3, "after": 1, "comma": 7}[phase]
            missing = [r for r in node.required if r not in seen]
            if phase == "open" and not missing:
                return 1
            if phase in ("open", "key"):
                if missing:
                    return sum(_entry(node, r) for r in missing) + 2 * (len(missing) - 1) + 1
                return min(_entry(node, k) for k in node.props if k not in seen) + 1
            if phase == "comma":
                return 1 + self._rest(("obj", node, "key", seen, None))
            if phase == "colon":
                return 0 if cur is None else 2 + node.props[cur].minlen + self._after_tail(node, seen | {cur})
            if phase == "colon_sp":
                return 1 + node.props[cur].minlen + self._after_tail(node, seen | {cur})
            return self._after_tail(node, seen)
        if kind == "reply":
            phase, name = f[1], f[4]
            tail = {"think": 3 + self.call_min + 1, "nl": self.call_min + 1, "call": self.call_min + 1,
                    "name_pre": 1, "name": 1, "args_pre": None, "args": 3, "close": 2, "end_call": 2, "next": 1,
                    "done": 0}[phase]
            if phase == "args_pre":
                return self.args[name].minlen + 3
            if phase == "name_pre":  # after `{"name": `: the name literal with its extras, then EOT
                return min(len(q) + self._after_name[n] for q, n in self.names.items()) + 1
            return tail
        raise AssertionError(kind)


_ANY_ARRAY = Node("array", items=ANY)
_STRING = Node("string")
_NUMBER = Node("number")
_ANY_LITERAL = Node("literal", lits=(tuple(b"true"), tuple(b"false"), tuple(b"null")))
