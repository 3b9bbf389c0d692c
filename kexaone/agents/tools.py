"""Tool registry for agents: Python functions with JSON schemas, called with validated arguments.

A tool is a Python function plus an OpenAI-style declaration (`{"type": "function", "function": {"name",
"description", "parameters"}}`). The schema is derived from the function's type hints and its Google-style docstring
(first paragraph = description, `Args:` entries = parameter descriptions), or given explicitly. Register functions
on a `ToolRegistry` (`registry.register(fn)` or `@registry.register`), or mark them with the module-level `@tool`
decorator and register them later (that is how `kexaone agent --tools FILE.py` finds them).

`ToolRegistry.call(name, arguments)` never raises for what a model can get wrong: an unknown tool, arguments that
are not a JSON object, arguments that fail the schema (checked with `jsonschema` before the function runs) and
exceptions inside the tool all come back as a `ToolResult` with `ok=False` and an error text meant to be shown to
the model as the tool's result, so it can correct itself.

This module does not run model code (the `python` tool goes through the sandbox, see kexaone.agents.loop) and does
not talk to models.
"""

from __future__ import annotations

import inspect
import json
import re
import types
import typing
from collections import abc
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import jsonschema

KINDS = ("read", "write", "generic")
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_TOOL_ATTR = "__kexaone_tool__"


@dataclass(frozen=True)
class Tool:
    """One callable tool. `parameters` is a JSON schema of type object; `kind` tags read/write tools (environments
    use it to know which calls change state)."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    kind: str = "generic"

    def spec(self) -> dict:
        """The OpenAI `tools=[...]` entry of this tool."""
        return {"type": "function", "function": {
            "name": self.name, "description": self.description, "parameters": self.parameters}}


@dataclass
class ToolResult:
    """What one call produced: `content` is the text the model sees (the value, or the error)."""

    ok: bool
    content: str
    value: Any = None
    error: str | None = None


# ---------------------------------------------------------------------------------------------- schema from code
_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object", list: "array",
           type(None): "null"}


def _type_schema(hint: Any, where: str) -> dict:
    """JSON schema of one Python type hint."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if hint in _SIMPLE:
        return {"type": _SIMPLE[hint]}
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (typing.Union, types.UnionType):
        non_null = [a for a in args if a is not type(None)]
        if len(non_null) == 1:  # Optional[X]: the value may also be null
            inner = _type_schema(non_null[0], where)
            if "type" in inner and isinstance(inner["type"], str):
                return {**inner, "type": [inner["type"], "null"]}
            return {"anyOf": [inner, {"type": "null"}]}
        return {"anyOf": [_type_schema(a, where) for a in args]}
    if origin is tuple and args and not (len(args) == 2 and args[1] is Ellipsis):  # tuple[int, str]: fixed slots
        return {"type": "array", "prefixItems": [_type_schema(a, where) for a in args], "minItems": len(args),
                "maxItems": len(args)}
    if origin in (list, tuple, set, frozenset, abc.Sequence):  # list[X], tuple[X, ...], ...
        return {"type": "array", **({"items": _type_schema(args[0], where)} if args else {})}
    if origin is dict:
        return {"type": "object"}
    raise ValueError(f"{where}: cannot turn type hint {hint!r} into a JSON schema; use str, int, float, bool, list, "
                     "dict, Literal[...], Optional[...] or pass parameters= explicitly")


_ARG_LINE = re.compile(r"^\s*(\*{0,2}[A-Za-z_][A-Za-z0-9_]*)\s*(?:\(([^)]*)\))?\s*:\s*(.*)$")
_SECTIONS = ("args:", "arguments:", "parameters:", "returns:", "return:", "raises:", "yields:", "examples:",
             "example:", "note:", "notes:")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(description, {parameter: description}) of a Google-style docstring."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    desc_lines: list[str] = []
    params: dict[str, str] = {}
    section, current = None, None
    for line in lines:
        low = line.strip().lower()
        if low in _SECTIONS:
            section, current = low.rstrip(":"), None
            continue
        if section is None:
            desc_lines.append(line)
        elif section in ("args", "arguments", "parameters"):
            m = _ARG_LINE.match(line)
            indent = len(line) - len(line.lstrip())
            if m and (current is None or indent <= params.get("__indent__", indent)):
                current = m.group(1).lstrip("*")
                params[current] = m.group(3).strip()
                params["__indent__"] = indent
            elif current is not None and line.strip():
                params[current] = (params[current] + " " + line.strip()).strip()
    params.pop("__indent__", None)
    description = " ".join(" ".join(desc_lines).split())  # one line; paragraphs after the first are kept too
    return description, params


def function_schema(fn: Callable, *, name: str | None = None, description: str | None = None) -> tuple[str, str, dict]:
    """(name, description, parameters) derived from `fn`'s signature, type hints and docstring. Parameters without
    a default are required; `*args`/`**kwargs` are not allowed (a model can only pass named JSON fields)."""
    name = name or fn.__name__
    where = f"tool {name!r}"
    try:
        hints = typing.get_type_hints(fn)
    except Exception as e:  # unresolved forward references
        raise ValueError(f"{where}: cannot resolve its type hints ({e})") from None
    doc_desc, doc_params = parse_docstring(inspect.getdoc(fn))
    props: dict[str, dict] = {}
    required: list[str] = []
    for p in inspect.signature(fn).parameters.values():
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            raise ValueError(f"{where}: *args/**kwargs cannot be declared as tool parameters")
        schema = _type_schema(hints.get(p.name, inspect.Parameter.empty), f"{where} parameter {p.name!r}")
        if p.name in doc_params and doc_params[p.name]:
            schema["description"] = doc_params[p.name]
        if p.default is p.empty:
            required.append(p.name)
        elif p.default is None or isinstance(p.default, (str, int, float, bool)):
            schema["default"] = p.default
            if p.default is None and isinstance(schema.get("type"), str):  # `x: T = None` accepts null too
                schema["type"] = [schema["type"], "null"]
        props[p.name] = schema
    params = {"type": "object", "properties": props, "required": required, "additionalProperties": False}
    return name, description if description is not None else doc_desc, params


def tool(fn: Callable | None = None, *, name: str | None = None, description: str | None = None,
         parameters: dict | None = None, kind: str = "generic"):
    """Mark a function as a tool (usable bare, `@tool`, or with options, `@tool(name=..., kind="write")`); the
    declaration is built now, so a bad hint fails at import. `ToolRegistry.register` picks the mark up."""

    def mark(f: Callable) -> Callable:
        setattr(f, _TOOL_ATTR, make_tool(f, name=name, description=description, parameters=parameters, kind=kind))
        return f

    return mark(fn) if fn is not None else mark


def make_tool(fn: Callable, *, name: str | None = None, description: str | None = None,
              parameters: dict | None = None, kind: str = "generic") -> Tool:
    """A `Tool` for `fn`; an explicit `parameters` schema replaces the derived one (and is checked to be valid)."""
    if not callable(fn):
        raise ValueError(f"a tool must be callable, got {type(fn).__name__}")
    if kind not in KINDS:
        raise ValueError(f"tool kind must be one of {KINDS}, got {kind!r}")
    if parameters is None:
        name, description, parameters = function_schema(fn, name=name, description=description)
    else:
        name = name or fn.__name__
        description = description if description is not None else parse_docstring(inspect.getdoc(fn))[0]
    if not _NAME_RE.match(name):
        raise ValueError(f"tool name {name!r} is not valid: letters, digits, '_', '.', '-', at most 64 characters, "
                         "not starting with a digit")
    if not isinstance(parameters, dict) or parameters.get("type") != "object":
        raise ValueError(f"tool {name!r}: parameters must be a JSON schema of type 'object', got {parameters!r}")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as e:
        raise ValueError(f"tool {name!r}: parameters is not a valid JSON schema: {e.message}") from None
    return Tool(name=name, description=description or "", parameters=parameters, fn=fn, kind=kind)


def format_validation_error(name: str, err: jsonschema.ValidationError) -> str:
    path = "/".join(str(p) for p in err.absolute_path) or "(arguments)"
    return f"invalid arguments for tool {name!r} at {path}: {err.message}"


@dataclass
class ToolRegistry:
    """Named tools; the order of registration is the order of the declarations sent to the model."""

    tools: dict[str, Tool] = field(default_factory=dict)

    def register(self, fn: Callable | Tool | None = None, *, name: str | None = None,
                 description: str | None = None, parameters: dict | None = None, kind: str = "generic"):
        """Add a function (or a prepared `Tool`). Usable as a call or a decorator, bare or with options; returns
        the function. Raises ValueError for a duplicate name."""

        def add(f):
            if isinstance(f, Tool):
                t = f
            elif hasattr(f, _TOOL_ATTR) and name is None and description is None and parameters is None:
                t = getattr(f, _TOOL_ATTR)
            else:
                t = make_tool(f, name=name, description=description, parameters=parameters, kind=kind)
            if t.name in self.tools:
                raise ValueError(f"a tool named {t.name!r} is already registered")
            self.tools[t.name] = t
            return f

        return add(fn) if fn is not None else add

    def register_marked(self, namespace: Iterable[Any]) -> list[str]:
        """Register every object in `namespace` marked with `@tool`; returns their names."""
        names = []
        for obj in namespace:
            t = getattr(obj, _TOOL_ATTR, None)
            if isinstance(t, Tool):
                self.register(t)
                names.append(t.name)
        return names

    def extend(self, other: ToolRegistry) -> None:
        for t in other.tools.values():
            self.register(t)

    def __contains__(self, name: str) -> bool:
        return name in self.tools

    def __len__(self) -> int:
        return len(self.tools)

    def names(self) -> list[str]:
        return list(self.tools)

    def specs(self) -> list[dict]:
        """The `tools=[...]` list for a chat request."""
        return [t.spec() for t in self.tools.values()]

    def validate(self, name: str, arguments: Any) -> tuple[dict | None, str | None]:
        """(arguments as a dict, None) when the call is well-formed, else (None, error text for the model)."""
        if name not in self.tools:
            return None, f"unknown tool {name!r}; available tools: {', '.join(self.tools) or '(none)'}"
        if isinstance(arguments, str):  # the wire format carries arguments as a JSON string
            try:
                arguments = json.loads(arguments) if arguments.strip() else {}
            except json.JSONDecodeError as e:
                return None, f"arguments of tool {name!r} are not valid JSON ({e.msg} at char {e.pos})"
        if not isinstance(arguments, dict):
            return None, f"arguments of tool {name!r} must be a JSON object, got {type(arguments).__name__}"
        validator = jsonschema.Draft202012Validator(self.tools[name].parameters)
        errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
        if errors:
            return None, format_validation_error(name, errors[0])
        return arguments, None

    def call(self, name: str, arguments: Any) -> ToolResult:
        """Validate, then run. Every failure becomes a `ToolResult(ok=False)` whose content starts with 'Error:'."""
        args, err = self.validate(name, arguments)
        if err is not None:
            return ToolResult(ok=False, content=f"Error: {err}", error=err)
        try:
            value = self.tools[name].fn(**args)
        except Exception as e:  # a tool's failure is information for the model, not a crash of the agent
            err = f"tool {name!r} failed: {type(e).__name__}: {e}"
            return ToolResult(ok=False, content=f"Error: {err}", error=err)
        return ToolResult(ok=True, content=to_text(value), value=value)


def to_text(value: Any) -> str:
    """How a tool's return value is shown to the model: strings as they are, everything else as JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, default=str)
