"""Atomic file writes (kexaone.utils.io)."""


def test_atomic_writes_make_ordinary_files_and_keep_an_existing_mode(tmp_path):
    import os
    import stat

    from kexaone.utils.io import atomic_write_text

    new = tmp_path / "report.html"
    atomic_write_text(new, "x")
    assert stat.S_IMODE(new.stat().st_mode) & 0o044 == 0o044 & ~_umask()  # readable by others unless umask forbids
    os.chmod(new, 0o600)
    atomic_write_text(new, "y")
    assert stat.S_IMODE(new.stat().st_mode) == 0o600 and new.read_text() == "y"
    assert [p.name for p in tmp_path.iterdir()] == ["report.html"]  # no temporary file left behind


def _umask() -> int:
    import os

    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_file(tmp_path):
    import pytest

    from kexaone.utils.io import atomic_open, atomic_write_text

    target = tmp_path / "state.json"
    atomic_write_text(target, "good")
    with pytest.raises(RuntimeError):
        with atomic_open(target) as f:
            f.write("half")
            raise RuntimeError("crash mid-write")
    assert target.read_text() == "good" and [p.name for p in tmp_path.iterdir()] == ["state.json"]
