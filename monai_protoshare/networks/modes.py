"""Module modes switched for a block of code and restored afterwards."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn

__all__ = ["evaluating"]


@contextlib.contextmanager
def evaluating(module: nn.Module) -> Iterator[nn.Module]:
    """Run ``module`` in eval mode (BN statistics frozen, dropout off) and restore every submodule's own mode
    afterwards, also on an exception.

    Unlike :func:`monai.networks.eval_mode` it leaves gradients on: Grad-CAM and the evidence maps need them.
    Submodules kept in another mode than their parent (a frozen decoder in eval inside a training network) get
    that mode back too.
    """
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield module
    finally:
        for m, training in modes:
            m.training = training
