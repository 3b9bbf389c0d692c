"""Command-line flags derived from config dataclass fields, so a stage never repeats its defaults by hand.

`add_config_arguments(parser, sections)` adds one argument group per section (its docstring is the title) and one
flag per field: `--seq-len` for `seq_len`, help from the field's attribute docstring plus its default, the type
from the annotation, `choices`/`metavar`/`append` from the field metadata (`kexaone.train.config.opt`). A bool
that defaults to False is a switch (`--resume`); one that defaults to True gets `--no-<name>`. Every flag defaults
to None, so `config_from_args` lays only the flags actually given over a `--config` file's values.

Not here: validation (the config classes do it) and stage-specific flags (a stage adds its own).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import cache
from typing import Any

from kexaone.train.config import load_config_file


@cache
def field_docs(cls: type) -> dict[str, str]:
    """{field name: its attribute docstring} of one dataclass (the string right after the annotated line), its
    base classes' docstrings included: a subclass that redeclares a field only to change its default keeps the
    base's help, and one that redeclares it with a docstring overrides it."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__[1:]):
        if dataclasses.is_dataclass(klass):
            docs.update(field_docs(klass))
    docs.update(_own_field_docs(cls))
    return docs


def _own_field_docs(cls: type) -> dict[str, str]:
    """The attribute docstrings written in `cls`'s own class body."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _base_type(hint: Any) -> Any:
    """int for `int | None`, list for `list[str]`, ..."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    origin = typing.get_origin(hint)
    if origin in (list, tuple, dict):
        return origin
    return args[0] if args and origin is not None else hint


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        d = f.default
        if d is None or isinstance(d, bool):
            return ""
        return f" (default {' '.join(map(str, d)) if isinstance(d, tuple) else repr(d) if isinstance(d, str) else d})"
    return ""


def add_config_arguments(parser: argparse.ArgumentParser, sections: typing.Sequence[type],
                         skip: typing.Collection[str] = (), config_cls: type | None = None) -> None:
    """One argument group per section, one flag per field (see the module docstring). `config_cls`: the stage's
    config class, whose defaults the help shows (a stage may redeclare a field to change its default, e.g.
    `out: str = "runs/sft"`; the flag stays in the first section that has the field); `skip`: fields that get no
    flag."""
    own = {f.name: f for f in dataclasses.fields(config_cls)} if config_cls is not None else {}
    seen = set(skip)
    for section in sections:
        group = parser.add_argument_group((section.__doc__ or section.__name__).strip())
        hints = typing.get_type_hints(section)
        docs = field_docs(section)
        for f in dataclasses.fields(section):
            meta = f.metadata
            if f.name in seen or meta.get("cli", True) is False:
                continue
            seen.add(f.name)
            flag = "--" + meta.get("flag", f.name.replace("_", "-"))
            kind = _base_type(hints[f.name])
            help_text = (docs.get(f.name, "") + _default_text(own.get(f.name, f))).replace("%", "%%")  # %-formatted
            kw: dict[str, Any] = {"dest": f.name, "default": None, "help": help_text or None}
            if kind is bool:
                if f.default is True:
                    group.add_argument("--no-" + f.name.replace("_", "-"), action="store_false", **kw)
                else:
                    group.add_argument(flag, action="store_true", **kw)
                continue
            if kind is list:
                kw.update(action="append", type=str)
            elif kind is tuple:
                kw.update(nargs=len(f.default), type=float)
            else:
                kw["type"] = kind
            if "choices" in meta:
                kw["choices"] = meta["choices"]
            if "metavar" in meta:
                kw["metavar"] = meta["metavar"]
            group.add_argument(flag, **kw)


def config_from_args(config_cls: type, args: argparse.Namespace) -> Any:
    """`config_cls` from --config (if any) with every flag that was given laid over it."""
    base: dict[str, Any] = load_config_file(args.config) if getattr(args, "config", None) else {}
    names = set(config_cls.field_names())
    for key, value in vars(args).items():
        if key in names and value is not None:
            base[key] = value
    return config_cls.from_dict(base, source=getattr(args, "config", None) or "command line")
