"""UM-ProtoShare on MONAI: interpretable glioma grading with shared multi-scale prototypes.

Subpackages follow MONAI's roles: ``networks``, ``losses``, ``metrics``, ``handlers``, ``engines``,
``explain``, ``data`` and ``workflows``. They are imported on first attribute access, so bundle
expressions such as ``$monai_protoshare.workflows.run_info.save_run_info(...)`` work after a plain
``import monai_protoshare``, and light command-line tools do not pay for importing torch.
"""

from ._lazy import submodule_getattr

__version__ = "0.1.0"
__getattr__ = submodule_getattr(__name__)
