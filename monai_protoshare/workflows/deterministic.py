"""Deterministic CPU mode (issue 20): the kernels every x86-64 machine with AVX2 has, and one thread.

Which CPU kernels run decides the rounding of every sum, and training amplifies a last-bit difference into a
different model. On one machine a run repeats bit for bit; three machine-dependent choices change the bits
(measured on a small UM-ProtoShare, four AdamW steps, torch 2.13.0; numbers in ``docs/reproducibility.md``):

- oneDNN's instruction set (convolutions): AVX2, AVX-512 and SSE4.1 kernels all give different weights;
- the thread count (oneDNN splits the convolutions' reductions by thread): 1 and 2 threads differ;
- ATen's vector kernels: ``default`` differs from AVX2, while AVX2 and AVX-512 agreed on these runs.

The mode pins each: ``ATEN_CPU_CAPABILITY=avx2``, ``ONEDNN_MAX_CPU_ISA=AVX2``, MKL's conditional numerical
reproducibility ``MKL_CBWR=AVX2``, and one thread. The libraries read these variables when they start, so the
command re-runs itself in a fresh process with them set (:func:`reexec_deterministic`). Not verified: that oneDNN
picks the same AVX2 kernels on CPUs with other cache sizes (only one machine was available).
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Sequence

__all__ = ["DETERMINISTIC_ENV", "reexec_deterministic"]

logger = logging.getLogger(__name__)

#: the environment of the deterministic mode: kernels every AVX2 machine has, one thread
DETERMINISTIC_ENV = {
    "ATEN_CPU_CAPABILITY": "avx2",
    "ONEDNN_MAX_CPU_ISA": "AVX2",
    "MKL_CBWR": "AVX2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


def reexec_deterministic(module: str, argv: Sequence[str]) -> None:
    """Replace this process by ``python -m module *argv`` under :data:`DETERMINISTIC_ENV`, unless already in it.

    Args:
        module: the command's module, e.g. ``"monai_protoshare.workflows.demo"``.
        argv: its arguments (``sys.argv[1:]``).
    """
    if all(os.environ.get(k) == v for k, v in DETERMINISTIC_ENV.items()):
        import torch

        torch.set_num_threads(1)
        logger.info("deterministic CPU mode: ATen %s, %s", torch.backends.cpu.get_cpu_capability(), DETERMINISTIC_ENV)
        return
    logger.info("re-running in deterministic CPU mode: %s", DETERMINISTIC_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, "-m", module, *argv], {**os.environ, **DETERMINISTIC_ENV})
