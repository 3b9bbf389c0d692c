"""Suite-wide settings.

The test models are tiny: on a 2-core machine (often shared), a second intra-op thread buys nothing and costs
10-20x in synchronisation for small matmuls, so tests run torch single-threaded. Subprocesses inherit the same
limit through OMP_NUM_THREADS.
"""

import os
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """The KEXAONE_CACHE directory every trainer test module shares: the default tokenizer, synthetic corpus and
    token shards are built once per session."""
    path = tmp_path_factory.getbasetemp() / "kexaone-cache"
    path.mkdir(exist_ok=True)
    return path
