"""kexaone.utils.io: atomic writes and the one writability probe every output directory goes through."""

from __future__ import annotations

import errno

import pytest

from test_data_support import tiny_tokenizer
from kexaone.utils.io import atomic_write_text, ensure_writable_dir


def test_writable_dir_is_created_and_left_empty(tmp_path):
    d = ensure_writable_dir(tmp_path / "a" / "b", "test directory")
    assert d == (tmp_path / "a" / "b").resolve() and d.is_dir() and list(d.iterdir()) == []
    atomic_write_text(d / "x.txt", "kept")
    assert ensure_writable_dir(d) == d and sorted(p.name for p in d.iterdir()) == ["x.txt"]


def test_unwritable_paths_name_the_directory_and_the_problem(tmp_path):
    f = tmp_path / "afile"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match=r"^cache dir .*afile exists and is not a directory$"):
        ensure_writable_dir(f, "cache dir")
    with pytest.raises(NotADirectoryError, match=r"^cache dir .*afile/sub cannot be created: a parent is a file"):
        ensure_writable_dir(f / "sub", "cache dir")


def test_a_refused_write_or_mkdir_is_a_permission_error(tmp_path, monkeypatch):
    # Simulated refusals: root (as in some CI containers) ignores permission bits, so a chmod test proves nothing.
    import kexaone.utils.io as io

    def refuse(*a, **k):
        raise OSError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(io.tempfile, "mkstemp", refuse)
    with pytest.raises(PermissionError, match=r"^cache dir .*ro is not writable: Permission denied$"):
        ensure_writable_dir(tmp_path / "ro", "cache dir")
    monkeypatch.setattr(io.Path, "mkdir", refuse)
    with pytest.raises(PermissionError, match=r"^cache dir .*new cannot be created: Permission denied$"):
        ensure_writable_dir(tmp_path / "new", "cache dir")


def test_every_output_directory_check_uses_the_probe(tmp_path, monkeypatch):
    import kexaone.data.shards as shards
    import kexaone.utils.io as io
    from kexaone.train.checkpoint import CheckpointManager, check_writable
    from kexaone.train.run import check_output_dir

    seen = []
    real = io.ensure_writable_dir

    def spy(directory, what="output directory"):
        seen.append(what)
        return real(directory, what)

    monkeypatch.setattr(io, "ensure_writable_dir", spy)
    monkeypatch.setattr(shards, "ensure_writable_dir", spy)  # imported by name at module level
    check_writable(tmp_path / "c")
    CheckpointManager(tmp_path / "m").check_writable()
    check_output_dir(tmp_path / "o")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="token cache directory"):
        shards.build_token_shards(["a document"], tiny_tokenizer(), tmp_path / "f")
    assert seen == ["checkpoint directory", "checkpoint directory", "output directory", "token cache directory"]
