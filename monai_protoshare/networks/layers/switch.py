"""The one switch between the fast kernels of :mod:`~monai_protoshare.networks.layers` and their references.

``MONAI_PROTOSHARE_REFERENCE_KERNELS=1`` (also ``true``, ``yes``, ``on``) in the environment when this module is
first imported selects the plain reference implementations for the whole process; :class:`use_reference_kernels`
changes the choice from code (tests, benchmarks), as a call or as a context manager that restores the previous
choice on exit. The fast kernels are the default.
"""

from __future__ import annotations

import os
from types import TracebackType

__all__ = ["ENVIRONMENT_VARIABLE", "reference_kernels", "use_reference_kernels"]

#: The environment variable read once, at import, for the initial choice.
ENVIRONMENT_VARIABLE = "MONAI_PROTOSHARE_REFERENCE_KERNELS"
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def _from_environment() -> bool:
    value = os.environ.get(ENVIRONMENT_VARIABLE, "").strip().lower()
    if value not in _TRUE + _FALSE:
        raise ValueError(f"{ENVIRONMENT_VARIABLE}={value!r}: expected one of {', '.join(_TRUE + _FALSE[1:])}")
    return value in _TRUE


_reference = _from_environment()


def reference_kernels() -> bool:
    """Whether the kernels run their plain reference implementations (the fast ones when false)."""
    return _reference


class use_reference_kernels:  # noqa: N801 - used like torch.set_grad_enabled, as a call or a context manager
    """Select the reference kernels (``enabled=True``) or the fast ones, from now or for a ``with`` block.

    Example:
        >>> with use_reference_kernels():
        ...     reference_kernels()
        True
        >>> reference_kernels()
        False
    """

    def __init__(self, enabled: bool = True) -> None:
        global _reference
        self.previous = _reference
        _reference = bool(enabled)

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        global _reference
        _reference = self.previous
