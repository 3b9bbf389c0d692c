"""A small document model (headings, paragraphs, tables, figures, code, foldable details) rendered twice: to
Markdown (figures as PNG files beside it) and to one self-contained HTML page (figures embedded as base64 PNGs).

Text is escaped for each target, so numbers and sample generations (which may contain `<`, `|`, backticks) show
as written. This module formats; it computes nothing.
"""

from __future__ import annotations

import base64
import html
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from kexaone.utils.io import atomic_write_bytes, atomic_write_text


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Para:
    text: str


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Figure:
    png: bytes
    name: str
    """File stem for the Markdown copy (letters, digits, '-', '_')."""
    caption: str = ""


@dataclass
class Code:
    text: str


@dataclass
class Details:
    summary: str
    text: str
    """Shown verbatim (pre-formatted)."""


Block = Heading | Para | Table | Figure | Code | Details


@dataclass
class Document:
    title: str
    blocks: list[Block] = field(default_factory=list)


def _md_cell(s: str) -> str:
    return str(s).replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_fence(text: str) -> str:
    fence = "```"
    while fence in text:
        fence += "`"
    return f"{fence}text\n{text}\n{fence}"


def to_markdown(doc: Document, figure_dir: str | os.PathLike, figure_rel: str) -> str:
    """Markdown text; figures are written as PNG files into figure_dir and linked as figure_rel/NAME.png."""
    figure_dir = Path(figure_dir)
    out = [f"# {doc.title}", ""]
    for b in doc.blocks:
        if isinstance(b, Heading):
            out += [f"{'#' * max(2, min(6, b.level))} {b.text}", ""]
        elif isinstance(b, Para):
            out += [b.text, ""]
        elif isinstance(b, Table):
            if b.caption:
                out += [b.caption, ""]
            out.append("| " + " | ".join(_md_cell(h) for h in b.headers) + " |")
            out.append("|" + "|".join("---" for _ in b.headers) + "|")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Figure):
            if not re.fullmatch(r"[A-Za-z0-9_-]+", b.name):
                raise ValueError(f"figure name {b.name!r} must use letters, digits, '-' and '_' only")
            figure_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(figure_dir / f"{b.name}.png", b.png)
            out += [f"![{_md_cell(b.caption or b.name)}]({figure_rel}/{b.name}.png)", ""]
        elif isinstance(b, Code):
            out += [_md_fence(b.text), ""]
        elif isinstance(b, Details):
            out += [f"<details><summary>{html.escape(b.summary, quote=False)}</summary>", "", _md_fence(b.text), "",
                    "</details>", ""]
        else:  # pragma: no cover - the union above is closed
            raise TypeError(f"unknown block {type(b).__name__}")
    return "\n".join(out).rstrip() + "\n"


_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1b1b1b;line-height:1.45}
h1{border-bottom:2px solid #a50034}h2{margin-top:1.8em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0 1.2em}th,td{border:1px solid #ccc;padding:.25em .6em;text-align:left}
th{background:#f3f3f3}td{font-variant-numeric:tabular-nums}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#555;font-size:.9em}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto;white-space:pre-wrap;word-break:break-word}
details{margin:.4em 0}summary{cursor:pointer}
"""


def to_html(doc: Document) -> str:
    """One self-contained HTML page (inline CSS, figures as data: URIs, no external requests)."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           '<meta name="viewport" content="width=device-width, initial-scale=1">',
           f"<title>{e(doc.title)}</title><style>{_CSS}</style></head><body>", f"<h1>{e(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            lv = max(2, min(6, b.level))
            out.append(f"<h{lv}>{e(b.text)}</h{lv}>")
        elif isinstance(b, Para):
            out.append(f"<p>{e(b.text)}</p>")
        elif isinstance(b, Table):
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in r) + "</tr>" for r in b.rows)
            head = "".join(f"<th>{e(str(h))}</th>" for h in b.headers)
            cap = f"<caption>{e(b.caption)}</caption>" if b.caption else ""
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
        elif isinstance(b, Figure):
            data = base64.b64encode(b.png).decode("ascii")
            cap = f"<figcaption>{e(b.caption)}</figcaption>" if b.caption else ""
            out.append(f'<figure><img alt="{e(b.caption or b.name)}" src="data:image/png;base64,{data}">{cap}</figure>')
        elif isinstance(b, Code):
            out.append(f"<pre>{e(b.text)}</pre>")
        elif isinstance(b, Details):
            out.append(f"<details><summary>{e(b.summary)}</summary><pre>{e(b.text)}</pre></details>")
        else:  # pragma: no cover
            raise TypeError(f"unknown block {type(b).__name__}")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_document(doc: Document, md_path: str | os.PathLike, html_path: str | os.PathLike,
                   figure_dirname: str = "report_figures") -> None:
    """Write report.md (figures into <md dir>/<figure_dirname>/) and the self-contained report.html, atomically."""
    md_path, html_path = Path(md_path), Path(html_path)
    atomic_write_text(md_path, to_markdown(doc, md_path.parent / figure_dirname, figure_dirname))
    atomic_write_text(html_path, to_html(doc))
