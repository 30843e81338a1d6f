"""Workflows: bundle option checks, run provenance, the demo, cross-validation and reports (modules loaded on use)."""

from .._lazy import submodule_getattr

__getattr__ = submodule_getattr(__name__)
