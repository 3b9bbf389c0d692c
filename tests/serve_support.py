"""Shared by the tests that run `kexaone serve` as a user does: a subprocess on 127.0.0.1 at a free port, waited
for on /health, stopped on exit. Not a test module itself; it starts nothing until `serve_subprocess` is entered."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from test_launch_support import free_port


@contextlib.contextmanager
def serve_subprocess(model_dir, *args: str, startup_s: float = 90.0) -> Iterator[str]:
    """Run `python -m kexaone serve --model MODEL_DIR --port <free> *args`, yield its base URL once /health answers
    200, and stop it on exit. Fails the test if the server exits early or does not come up within `startup_s`."""
    port = free_port()
    # sys.path carries the worktree first (PYTHONPATH) so the child imports the same kexaone as the test.
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    proc = subprocess.Popen([sys.executable, "-m", "kexaone", "serve", "--model", str(model_dir), "--port", str(port),
                             *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                pytest.fail(f"kexaone serve exited early:\n{proc.stdout.read()}")
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"kexaone serve did not come up within {startup_s:g} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
