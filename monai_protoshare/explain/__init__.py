"""Explanations: attribution maps, evidence computation and writers, evidence sanity checks (modules loaded on use)."""

from .._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
