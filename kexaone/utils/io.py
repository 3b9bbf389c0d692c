"""Atomic file writes (write to a temporary file in the same directory, fsync, then rename over the target) and the
one writability probe for output directories.

A crash, kill or Ctrl-C at any point leaves either the old file or the new one, never a half-written file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def _current_umask() -> int:
    # os.umask can only be read by setting it; done once at import, before any thread of ours writes files.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[IO]:
    """Open a temporary sibling of `path` for writing; on a clean exit it is fsynced and renamed onto `path`.
    On an exception the temporary file is removed and `path` is untouched."""
    path = Path(path)
    if not path.parent.exists():
        raise FileNotFoundError(f"directory {path.parent} does not exist (writing {path.name})")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    binary = "b" in mode
    try:
        # mkstemp makes the file private (0600); give it the mode the replaced file had, else an ordinary file's.
        try:
            os.chmod(tmp, path.stat().st_mode & 0o777)
        except FileNotFoundError:
            os.chmod(tmp, 0o666 & ~_UMASK)
        with os.fdopen(fd, mode, encoding=None if binary else encoding) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb") as f:
        f.write(data)


def ensure_writable_dir(directory: str | os.PathLike, what: str = "output directory") -> Path:
    """Create `directory` if needed and prove files can be written, fsynced, renamed and removed in it (the steps
    an atomic write takes), leaving nothing behind; returns the resolved path.

    Call before long work so a bad output path fails in a second, not after hours. `what` names the directory in
    the errors: NotADirectoryError when the path or a parent is a file, PermissionError when it cannot be created
    or written."""
    path = Path(directory).expanduser()
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{what} {path} exists and is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as e:
        raise NotADirectoryError(f"{what} {path} cannot be created: a parent is a file ({e})") from e
    except OSError as e:
        raise PermissionError(f"{what} {path} cannot be created: {e.strerror or e}") from e
    probe = None
    try:
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=path)
        with os.fdopen(fd, "wb") as f:
            f.write(b"kexaone")
            f.flush()
            os.fsync(f.fileno())
        os.replace(probe, probe + ".renamed")
        probe += ".renamed"
    except OSError as e:
        raise PermissionError(f"{what} {path} is not writable: {e.strerror or e}") from e
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
    return path.resolve()
