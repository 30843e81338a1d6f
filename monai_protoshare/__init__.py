"""UM-ProtoShare on MONAI: interpretable glioma grading with shared multi-scale prototypes.

Subpackages follow MONAI's roles: ``networks``, ``losses``, ``metrics``, ``handlers``, ``engines``,
``explain``, ``data`` and ``workflows``.
"""

__version__ = "0.1.0"
