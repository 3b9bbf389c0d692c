"""Run untrusted Python code (model completions) and score it against tests, for the RL code reward.

Layers, each enough to stop the common failures on its own (defence in depth):
  1. a separate, fresh interpreter (`python -I -B`) in a fresh temporary working directory (deleted afterwards),
     with a scrubbed environment and its own session, so the whole process group is killed at the wall-clock
     timeout or when its output passes the limit;
  2. resource limits set in the child with soft = hard: CPU seconds, address space, file size, open files, number
     of processes (and no core dumps);
  3. where the machine allows it, `unshare` namespaces: no network (an empty network namespace) and a private PID
     namespace whose processes all die with it; as root the program also runs as `nobody` (setpriv, no groups), so
     it cannot write outside its directory or raise its limits again;
  4. an audit hook (`sys.addaudithook`) installed before the program runs, which stops it at the first socket,
     process creation or signal, write outside its directory, ctypes load or rlimit change, with a clear reason.
The audit hook is a guard, not a proof (native extensions can bypass it); the namespaces and limits are what hold
when it is bypassed. Which isolation this machine gives is reported by `isolation()`.

Limits of this module: Python only; no per-test CPU accounting beyond the wall-clock limit of each run; a program
that needs threads beyond the process limit, subprocesses or the network fails by design.
"""

from __future__ import annotations

import functools
import math
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

__all__ = ["SandboxResult", "run_code", "run_tests", "isolation", "outputs_match"]

_BOOT = (Path(__file__).with_name("_sandbox_boot.py")).read_text(encoding="utf-8")
_NOBODY = 65534
_STOPPED, _OUT_OF_MEMORY = 113, 114  # exit codes the bootstrap uses


@dataclass(frozen=True)
class SandboxResult:
    """What happened to one run. `ok` is True only for a clean exit 0 within every limit; `reason` says why not
    ("" when ok). `exit_code` is None when the sandbox killed the program (timeout, output limit)."""

    ok: bool
    stdout: str
    stderr: str
    exit_code: int | None
    timed_out: bool
    reason: str


def _probe(prefix: list[str]) -> bool:
    try:
        done = subprocess.run(
            prefix + [sys.executable, "-I", "-c", "pass"], capture_output=True, timeout=20,
            env={"PATH": "/usr/bin:/bin"},
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return done.returncode == 0


@functools.cache
def _isolation_prefix() -> tuple[tuple[str, ...], str]:
    unshare, setpriv = shutil.which("unshare"), shutil.which("setpriv")
    candidates: list[tuple[list[str], str]] = []
    if unshare and os.geteuid() == 0:
        namespaces = [unshare, "--net", "--pid", "--kill-child", "--"]
        if setpriv:
            drop = [setpriv, f"--reuid={_NOBODY}", f"--regid={_NOBODY}", "--clear-groups", "--"]
            candidates.append((namespaces + drop, "network+pid namespaces, uid nobody"))
        candidates.append((namespaces, "network+pid namespaces"))
    if unshare:
        candidates.append(([unshare, "--user", "--net", "--pid", "--kill-child", "--"],
                           "user+network+pid namespaces"))
    for prefix, description in candidates:
        if _probe(prefix):
            return tuple(prefix), description
    return (), "none (rlimits and audit hook only)"


def isolation() -> str:
    """Which namespace isolation this machine gives the sandbox (probed once per process)."""
    return _isolation_prefix()[1]


def _scrubbed_env(workdir: str) -> dict[str, str]:
    # Nothing of the caller's environment leaks in (tokens, proxies, PYTHONPATH); one BLAS/OMP thread because
    # threads count against the process limit.
    return {
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": workdir,
        "TMPDIR": workdir,
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "OMP_NUM_THREADS": "1",
        "OPENBLAS_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
    }


def _write_files(workdir: Path, files: Mapping[str, str]) -> None:
    for name, content in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise ValueError(f"sandbox file name must be a relative path inside the working directory, got {name!r}")
        target = workdir / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(content, encoding="utf-8")


def _chown_tree(path: Path, uid: int) -> None:
    for dirpath, _, filenames in os.walk(path):
        os.chown(dirpath, uid, uid)
        for filename in filenames:
            os.chown(os.path.join(dirpath, filename), uid, uid)


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _check_limits(timeout_s: float, memory_mb: int, max_output_bytes: int, max_processes: int) -> None:
    if not (timeout_s > 0 and math.isfinite(timeout_s)):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if memory_mb < 32:
        raise ValueError(f"memory_mb must be at least 32 (the interpreter itself needs it), got {memory_mb!r}")
    if max_output_bytes < 1:
        raise ValueError(f"max_output_bytes must be positive, got {max_output_bytes!r}")
    if max_processes < 1:
        raise ValueError(f"max_processes must be positive, got {max_processes!r}")


def run_code(
    code: str,
    *,
    stdin: str = "",
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    max_output_bytes: int = 65536,
    files: dict[str, str] | None = None,
    max_processes: int = 64,
    max_file_mb: int = 16,
    max_open_files: int = 64,
    guard: bool = True,
) -> SandboxResult:
    """Run `code` as a Python program in the sandbox, feeding it `stdin`, and return what happened.

    `timeout_s` is wall-clock time from start to exit (the CPU limit is one second above it); `memory_mb` caps the
    address space; stdout and stderr are each cut at `max_output_bytes`, and passing that limit stops the run
    (ok False). `files` are written into the working directory first (relative names). `max_processes` is the
    process/thread limit (as root it counts every process of uid nobody, so concurrent runs share it).
    `guard=False` leaves out the audit hook, only to test that the other layers hold on their own.
    """
    if not isinstance(code, str):
        raise TypeError(f"code must be a str, got {type(code).__name__}")
    _check_limits(timeout_s, memory_mb, max_output_bytes, max_processes)
    prefix, description = _isolation_prefix()
    drops_to_nobody = "uid nobody" in description

    outer = Path(tempfile.mkdtemp(prefix="kexaone-sandbox-"))
    try:
        os.chmod(outer, 0o755)  # nobody must read the solution file next to its working directory
        workdir = outer / "work"
        workdir.mkdir()
        _write_files(workdir, files or {})
        solution = outer / "solution.py"
        solution.write_text(code, encoding="utf-8")
        if drops_to_nobody:
            _chown_tree(workdir, _NOBODY)
        with tempfile.TemporaryFile() as stdin_file:
            stdin_file.write(stdin.encode("utf-8"))
            stdin_file.seek(0)
            return _run(prefix, workdir, solution, stdin_file, timeout_s, memory_mb, max_output_bytes,
                        max_processes, max_file_mb, max_open_files, guard)
    finally:
        shutil.rmtree(outer, ignore_errors=True)


def _run(prefix, workdir, solution, stdin_file, timeout_s, memory_mb, max_output_bytes, max_processes,
         max_file_mb, max_open_files, guard) -> SandboxResult:
    report_r, report_w = os.pipe()
    args = [
        str(report_w), str(math.ceil(timeout_s) + 1), str(memory_mb * 2**20), str(max_file_mb * 2**20),
        str(max_open_files), str(max_processes), "1" if guard else "0", str(solution),
    ]
    cmd = list(prefix) + [sys.executable, "-I", "-B", "-X", "utf8", "-c", _BOOT, *args]
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            cmd, stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=workdir,
            env=_scrubbed_env(str(workdir)), start_new_session=True, pass_fds=(report_w,), close_fds=True,
        )
    except BaseException:
        os.close(report_r)
        raise
    finally:
        os.close(report_w)
    out, err, report = bytearray(), bytearray(), bytearray()
    streams = {proc.stdout.fileno(): out, proc.stderr.fileno(): err, report_r: report}
    selector = selectors.DefaultSelector()
    for fd in streams:
        selector.register(fd, selectors.EVENT_READ)
    deadline = start + timeout_s
    timed_out = overflow = False
    try:
        while selector.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in selector.select(remaining):
                data = os.read(key.fd, 65536)
                if not data:
                    selector.unregister(key.fd)
                    continue
                buf = streams[key.fd]
                buf += data
                if key.fd != report_r and len(buf) > max_output_bytes:
                    overflow = True
            if overflow:
                break
        if not (timed_out or overflow):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _kill_group(proc.pid)  # also reaps anything the program left running in its group
        proc.wait()
        selector.close()
        proc.stdout.close()
        proc.stderr.close()
        os.close(report_r)

    stdout = out[:max_output_bytes].decode("utf-8", "replace")
    stderr = err[:max_output_bytes].decode("utf-8", "replace")
    exit_code = None if (timed_out or overflow) else proc.returncode
    reason = _reason(exit_code, timed_out, overflow, bytes(report), stderr, timeout_s, max_output_bytes)
    return SandboxResult(ok=reason == "", stdout=stdout, stderr=stderr, exit_code=exit_code,
                         timed_out=timed_out, reason=reason)


def _reason(exit_code, timed_out, overflow, report, stderr, timeout_s, max_output_bytes) -> str:
    if timed_out:
        return f"timed out after {timeout_s:g}s"
    if overflow:
        return f"output limit exceeded ({max_output_bytes} bytes)"
    if report:
        return report.decode("utf-8", "replace")
    if exit_code == 0:
        return ""
    last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
    if exit_code is not None and exit_code < 0:
        name = signal.Signals(-exit_code).name if -exit_code in signal.valid_signals() else str(-exit_code)
        if -exit_code in (signal.SIGXCPU, signal.SIGKILL):
            return f"CPU time limit exceeded ({name})"
        return f"killed by {name}"
    if "MemoryError" in last:
        return f"memory limit exceeded: {last}"
    return f"exit code {exit_code}" + (f": {last}" if last else "")


# ----------------------------------------------------------------------------------------------------------------
# Tests for code rewards


def _tokens_equal(a: str, b: str) -> bool:
    if a == b:
        return True
    try:
        return Decimal(a) == Decimal(b)  # "1.0" vs "1", "2.50" vs "2.5"
    except InvalidOperation:
        return False


def outputs_match(actual: str, expected: str) -> bool:
    """LiveCodeBench-style stdout comparison: lines stripped (trailing blank lines ignored), the same number of
    lines, each line equal as text or token by token as decimal numbers."""
    got = [line.strip() for line in actual.strip().splitlines()]
    want = [line.strip() for line in expected.strip().splitlines()]
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g == w:
            continue
        gt, wt = g.split(), w.split()
        if len(gt) != len(wt) or not all(_tokens_equal(x, y) for x, y in zip(gt, wt)):
            return False
    return True


def run_tests(
    code: str,
    tests: Sequence[Mapping[str, str]] | str,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    stop_at_first_failure: bool = False,
) -> float:
    """Fraction of `tests` the program passes, in [0, 1].

    `tests` is either a list of `{"input": stdin, "output": expected stdout}` cases (each run separately, compared
    with `outputs_match`), or a string of Python (assert statements) appended to the program and run once: 1.0 if
    it exits cleanly, else 0.0. Every run has its own sandbox and its own `timeout_s`.
    """
    if isinstance(tests, str):
        if not tests.strip():
            raise ValueError("assert-style tests are an empty string")
        return 1.0 if run_code(code + "\n\n" + tests + "\n", timeout_s=timeout_s, memory_mb=memory_mb).ok else 0.0
    if not tests:
        raise ValueError("tests is an empty list; give at least one {'input', 'output'} case")
    passed = 0
    for i, case in enumerate(tests):
        if not isinstance(case, Mapping) or "input" not in case or "output" not in case:
            raise ValueError(f"test {i} must be a mapping with 'input' and 'output', got {case!r:.100}")
        result = run_code(code, stdin=str(case["input"]), timeout_s=timeout_s, memory_mb=memory_mb)
        if result.ok and outputs_match(result.stdout, str(case["output"])):
            passed += 1
        elif stop_at_first_failure:
            break
    return passed / len(tests)
