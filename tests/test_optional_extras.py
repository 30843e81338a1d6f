"""The library imports without its optional extras (DICOM, skull stripping, Greedy): they load where used."""

from __future__ import annotations

import subprocess
import sys
import textwrap

EXTRAS = ("highdicom", "pydicom", "dcm2niix", "deepbet", "picsl_greedy")

_CHECK = textwrap.dedent(
    """
    import importlib, importlib.abc, pkgutil, sys

    EXTRAS = {extras!r}

    class Absent(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in EXTRAS:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
            return None

    sys.meta_path.insert(0, Absent())
    try:
        import pydicom
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit("the finder does not hide the extras")
    for package in ("monai_protoshare.handlers", "monai_protoshare.explain", "monai_protoshare.workflows"):
        module = importlib.import_module(package)
        for info in pkgutil.iter_modules(module.__path__):
            importlib.import_module(f"{{package}}.{{info.name}}")
    from monai_protoshare.explain.dicom_seg import read_series
    try:
        read_series(["x.dcm"])
    except ImportError as err:
        print("ERROR", err)
    print("LOADED", sorted(name for name in sys.modules if name.split(".")[0] in EXTRAS))
    """
)


def test_handlers_explain_and_workflows_import_without_the_extras_and_name_the_extra_when_used():
    code = _CHECK.format(extras=EXTRAS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert "LOADED []" in lines
    assert "ERROR DICOM SEG needs pydicom: pip install 'monai_protoshare[dicom]'" in lines
