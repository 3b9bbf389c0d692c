"""Suite-wide settings.

The test models are tiny: on a 2-core machine (often shared), a second intra-op thread buys nothing and costs
10-20x in synchronisation for small matmuls, so tests run torch single-threaded. Subprocesses inherit the same
limit through OMP_NUM_THREADS.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

torch.set_num_threads(1)
