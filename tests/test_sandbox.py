"""The code sandbox (kexaone.rl.sandbox): hostile programs are stopped with a clear reason within their limits,
the caller carries on, and correct programs pass."""

import os
import subprocess
import time

import pytest

from kexaone.rl.sandbox import isolation, outputs_match, run_code, run_tests

SUM_PROGRAM = "import sys\nprint(sum(int(x) for x in sys.stdin.read().split()))\n"


def _nobody_processes() -> set[str]:
    """PIDs of uid nobody (the sandbox's user). Compared as sets: other sandboxes on the machine may end meanwhile,
    so a test checks that none of its own children is left (no new PID), not that the count is unchanged."""
    if "uid nobody" not in isolation():
        return set()
    listed = subprocess.run(["ps", "-u", "65534", "-o", "pid="], capture_output=True, text=True)
    return set(listed.stdout.split())


def test_correct_program_passes():
    result = run_code(SUM_PROGRAM, stdin="1 2 3\n4")
    assert result.ok and result.exit_code == 0 and not result.timed_out and result.reason == ""
    assert result.stdout == "10\n"


def test_files_and_working_directory():
    code = "import os\nprint(open('data/in.txt').read().upper())\nopen('out.txt', 'w').write('x')\n" \
           "print(sorted(os.listdir('.')))"
    result = run_code(code, files={"data/in.txt": "hello"})
    assert result.ok, result.reason
    assert result.stdout.splitlines() == ["HELLO", "['data', 'out.txt']"]
    with pytest.raises(ValueError, match="relative path"):
        run_code("pass", files={"../x": ""})


def test_standard_streams_and_dev_null_stay_writable():
    code = "import sys\nopen('/dev/null', 'w').write('x')\nout = open(1, 'w', closefd=False)\nout.write('a\\n')\n" \
           "out.flush()\nprint('b', file=sys.stderr)"
    result = run_code(code)
    assert result.ok, result.reason
    assert result.stdout == "a\n" and result.stderr == "b\n"


def test_environment_is_scrubbed(monkeypatch):
    monkeypatch.setenv("KEXAONE_SECRET_TOKEN", "s3cret")
    result = run_code("import os\nprint(sorted(os.environ))\nprint(os.environ.get('KEXAONE_SECRET_TOKEN'))")
    assert result.ok
    assert "KEXAONE_SECRET_TOKEN" not in result.stdout.splitlines()[0] and result.stdout.splitlines()[1] == "None"


@pytest.mark.parametrize("code", ["while True:\n    pass\n", "import time\ntime.sleep(60)\n"], ids=["spin", "sleep"])
def test_infinite_loop_times_out(code):
    start = time.monotonic()
    result = run_code(code, timeout_s=1.0)
    elapsed = time.monotonic() - start
    assert not result.ok and result.timed_out and result.exit_code is None
    assert result.reason == "timed out after 1s"
    assert elapsed < 3.0


@pytest.mark.parametrize(
    "code", ["x = bytearray(10**10)\n", "a = []\nwhile True:\n    a.append(bytearray(10**6))\n"], ids=["one", "grow"]
)
def test_memory_limit(code):
    result = run_code(code, memory_mb=128, timeout_s=5.0)
    assert not result.ok and not result.timed_out
    assert result.reason == "memory limit exceeded (128 MB address space)"


def test_fork_bomb_is_stopped():
    before = _nobody_processes()
    result = run_code("import os\nwhile True:\n    os.fork()\n", timeout_s=2.0)
    assert not result.ok and result.reason == "blocked: creating a process (os.fork)"
    result = run_code("import subprocess\nsubprocess.run(['ls'])\n", timeout_s=2.0)
    assert not result.ok and result.reason.startswith("blocked: creating a process")
    assert not _nobody_processes() - before


def test_fork_bomb_without_the_audit_hook_hits_the_process_limit():
    # The other layers on their own: the process limit stops the forks, and killing the group / PID namespace
    # leaves nothing behind.
    before = _nobody_processes()
    start = time.monotonic()
    result = run_code("import os\nwhile True:\n    os.fork()\n", timeout_s=2.0, max_processes=16, guard=False)
    assert not result.ok
    assert time.monotonic() - start < 4.0
    time.sleep(0.2)
    assert not _nobody_processes() - before


def test_write_outside_directory_is_blocked(tmp_path):
    target = tmp_path / "escape.txt"
    os.chmod(tmp_path, 0o777)
    for code in (f"open({str(target)!r}, 'w').write('x')",
                 f"import os\nos.close(os.open({str(target)!r}, os.O_WRONLY | os.O_CREAT))",
                 "import os\nos.symlink('/etc', 'etc')\nopen('etc/evil', 'w')",
                 "import shutil\nshutil.rmtree('/tmp/whatever')"):
        result = run_code(code)
        assert not result.ok and result.reason.startswith("blocked:"), (code, result)
        assert "outside the working directory" in result.reason
    assert not target.exists()


def test_socket_is_blocked():
    for code in ("import socket\nsocket.socket()",
                 "import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)",
                 "import urllib.request\nurllib.request.urlopen('http://example.com', timeout=1)"):
        result = run_code(code)
        assert not result.ok and result.reason.startswith("blocked:"), (code, result.reason)


@pytest.mark.skipif("network" not in isolation(), reason=f"no network namespace here ({isolation()})")
def test_no_network_without_the_audit_hook():
    result = run_code("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)", guard=False)
    assert not result.ok and "unreachable" in result.reason.lower()


def test_ctypes_and_rlimit_changes_are_blocked():
    assert run_code("import ctypes").reason == "blocked: loading native code (import ctypes)"
    result = run_code("import resource\nresource.setrlimit(resource.RLIMIT_AS, (-1, -1))")
    assert result.reason == "blocked: changing resource limits (resource.setrlimit)"


def test_output_is_truncated_and_stops_the_run():
    result = run_code("while True:\n    print('x' * 1000)\n", max_output_bytes=5000, timeout_s=5.0)
    assert not result.ok and not result.timed_out and result.exit_code is None
    assert result.reason == "output limit exceeded (5000 bytes)"
    assert len(result.stdout) == 5000


def test_errors_and_exit_codes():
    result = run_code("raise ValueError('boom')")
    assert not result.ok and result.exit_code == 1 and result.reason == "exit code 1: ValueError: boom"
    assert "ValueError: boom" in result.stderr
    result = run_code("import sys\nsys.exit(3)")
    assert result.exit_code == 3 and result.reason == "exit code 3"
    with pytest.raises(ValueError, match="timeout_s"):
        run_code("pass", timeout_s=0)
    with pytest.raises(ValueError, match="memory_mb"):
        run_code("pass", memory_mb=1)
    with pytest.raises(TypeError, match="code must be a str"):
        run_code(b"pass")


def test_hostile_completions_get_reward_zero_in_time_and_the_caller_continues():
    # Issue 14's must-show: each hostile program scores 0 within its time limit, and scoring goes on.
    from kexaone.rl.rewards import code_reward

    hostile = {
        "loops forever": "while True:\n    pass",
        "allocates far past the limit": "x = [bytearray(10**8) for _ in range(100)]",
        "forks repeatedly": "import os\nwhile True:\n    os.fork()",
        "writes outside its directory": "open('/tmp/kexaone-sandbox-escape', 'w').write('x')",
        "opens a socket": "import socket\nsocket.create_connection(('127.0.0.1', 22))",
    }
    tests = [{"input": "1 2", "output": "3"}]
    for what, code in hostile.items():
        start = time.monotonic()
        [reward] = code_reward(["p"], [f"```python\n{code}\n```"], tests=[tests], timeout_s=1.0, memory_mb=256)
        assert reward == 0.0, what
        assert time.monotonic() - start < 3.0, what
        result = run_code(code, timeout_s=1.0, memory_mb=256)
        assert not result.ok and result.reason, what
    assert not os.path.exists("/tmp/kexaone-sandbox-escape")
    assert code_reward(["p"], [SUM_PROGRAM], tests=[tests]) == [1.0]


def test_run_tests_stdio_fraction():
    tests = [
        {"input": "1 2", "output": "3\n"},
        {"input": "5\n5", "output": "  10  \n\n"},  # whitespace around lines does not matter
        {"input": "1 1", "output": "3"},  # wrong on purpose: the program prints 2
    ]
    assert run_tests(SUM_PROGRAM, tests) == pytest.approx(2 / 3)
    assert run_tests(SUM_PROGRAM, tests[::-1], stop_at_first_failure=True) == 0.0
    with pytest.raises(ValueError, match="'input' and 'output'"):
        run_tests(SUM_PROGRAM, [{"in": "1"}])
    with pytest.raises(ValueError, match="empty list"):
        run_tests(SUM_PROGRAM, [])


def test_run_tests_assert_style():
    code = "def add(a, b):\n    return a + b\n"
    assert run_tests(code, "assert add(1, 2) == 3\nassert add(-1, 1) == 0") == 1.0
    assert run_tests(code, "assert add(1, 2) == 4") == 0.0


def test_outputs_match():
    assert outputs_match("1 2\n3\n", "1 2\n3")
    assert outputs_match("2.50\n", "2.5")
    assert outputs_match("  a b \n", "a b")
    assert not outputs_match("1\n2", "1")
    assert not outputs_match("1 2", "1 3")
    assert not outputs_match("abc", "abd")
