"""Real source code for the corpus: the Python standard library installed on this machine.

Licence: the Python standard library is Copyright (c) Python Software Foundation and distributed under the PSF
License Agreement (https://docs.python.org/3/license.html). kexaone ships none of it: it is read at run time from
the local installation (`sysconfig.get_paths()["stdlib"]`), so the corpus depends on the installed Python version.

Files are taken in a fixed order (sorted by a hash of their relative path, so any budget gets a spread of modules)
and cut into documents of about 40-120 lines at top-level statements, each headed by `# <relative path>`. Test
suites, bundled third-party packages, generated tables and files over `max_file_bytes` are skipped. A fixed
twentieth of the files (`is_heldout_file`) never enters training: the code-completion task is drawn from them.
"""

from __future__ import annotations

import hashlib
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from kexaone.data.sources import Document

DOMAIN = "code"
HELDOUT_MOD = 20
_SKIP_DIRS = {"test", "tests", "idle_test", "site-packages", "dist-packages", "__pycache__", "lib2to3",
              "ensurepip", "turtledemo", "pydoc_data", "encodings", "config-3", "lib-dynload"}
_SKIP_FILES = {"__phello__.foo.py"}


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _hash(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little")


def is_heldout_file(rel: str) -> bool:
    """True for the files reserved for the code-completion task (a fixed twentieth, by path hash)."""
    return _hash(f"code-file|{rel}") % HELDOUT_MOD == 0


@dataclass(frozen=True)
class SourceFile:
    rel: str
    path: Path


def stdlib_files(root: Path | None = None, max_file_bytes: int = 120_000) -> list[SourceFile]:
    """Eligible .py files under the stdlib root, in the corpus order (by path hash, ties by path)."""
    root = stdlib_root() if root is None else Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Python standard library directory {root} does not exist")
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        # Prune while walking: site-packages alone can hold far more files than the stdlib itself.
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("config-"))
        for name in sorted(filenames):
            if not name.endswith(".py") or name in _SKIP_FILES or name.startswith("test_"):
                continue
            p = Path(dirpath) / name
            if not p.is_file() or not 200 <= p.stat().st_size <= max_file_bytes:
                continue
            out.append(SourceFile(p.relative_to(root).as_posix(), p))
    out.sort(key=lambda f: (_hash(f.rel), f.rel))
    return out


def read_source(f: SourceFile) -> str | None:
    """The file's text with LF newlines, or None when it is not UTF-8."""
    try:
        return f.path.read_text(encoding="utf-8").replace("\r\n", "\n")
    except (UnicodeDecodeError, OSError):
        return None


def split_code(text: str, min_lines: int = 40, max_lines: int = 120) -> list[str]:
    """Cut a file into chunks at top-level statements (a non-indented line after a blank one) once a chunk has
    `min_lines`; a chunk never exceeds `max_lines`."""
    lines = text.split("\n")
    chunks, cur = [], []
    for i, line in enumerate(lines):
        boundary = (line and not line[0].isspace() and i > 0 and not lines[i - 1].strip()
                    and not line.startswith((")", "]", "}")))
        if cur and ((boundary and len(cur) >= min_lines) or len(cur) >= max_lines):
            chunks.append("\n".join(cur).strip("\n"))
            cur = []
        cur.append(line)
    if cur and "\n".join(cur).strip():
        chunks.append("\n".join(cur).strip("\n"))
    return [c for c in chunks if c.strip()]


def code_documents(heldout: bool = False, root: Path | None = None) -> Iterator[Document]:
    """Chunks of the training files (or, with heldout=True, of the held-out files), in corpus order."""
    for f in stdlib_files(root):
        if is_heldout_file(f.rel) != heldout:
            continue
        text = read_source(f)
        if text is None:
            continue
        for chunk in split_code(text):
            yield Document(f"# {f.rel}\n{chunk}\n", f"{DOMAIN}/py")
