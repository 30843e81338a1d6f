"""``python -m build`` makes a wheel (and an sdist) that installs apart from the repository and runs a bundle.

Bundles are not package data: like the model-zoo's, a bundle folder travels on its own and names the installed
package in its ``_target_``s. The default test installs the wheel with ``--no-deps`` into a new virtual environment
whose dependencies come from this environment's site-packages (a ``.pth`` line; the repository's editable install is
not visible there), and runs a copied bundle's inference from a folder outside the repository. The ``slow`` test
builds both archives and installs the wheel with its dependencies into a fresh environment (torch pinned).
"""

import csv
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch

from monai_protoshare.networks import build_network
from tests.bundles.conftest import BUNDLES_DIR

REPO = BUNDLES_DIR.parent
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "monai_protoshare", "data_prep")
TINY = ["--encoder_layers", "[1, 1]", "--encoder_widths", "[4, 8]", "--embedding_dim", "8", "--num_workers", "0"]
TINY += ["--spatial_size", "[16, 16, 8]", "--pixdim", "12.0", "--top_k", "1"]


def _build(tmp_path, *formats):
    """Build from a copy of the package sources (the build writes build/ and *.egg-info next to them)."""
    source = tmp_path / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(REPO / name, source / name)
    dist = tmp_path / "dist"
    flags = [f"--{f}" for f in formats]
    subprocess.run(
        [sys.executable, "-m", "build", *flags, "--no-isolation", "--outdir", str(dist), str(source)],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return dist


def _venv(path: Path) -> Path:
    subprocess.run([sys._base_executable, "-m", "venv", str(path)], check=True, capture_output=True, timeout=300)
    return path / "bin" / "python"


def _run_inference(python: Path, tmp_path: Path, cases: Path) -> list[dict]:
    """The protopnet bundle, copied outside the repository, run by ``python`` from a folder outside it too."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLES_DIR / "protopnet", bundle)
    (bundle / "models").mkdir()
    network = build_network("protopnet", encoder_layers=[1, 1], encoder_widths=[4, 8], embedding_dim=8)
    torch.save(network.state_dict(), bundle / "models" / "model.pt")  # read from bundle_root/models by default
    work = tmp_path / "work"
    (work / "cases").mkdir(parents=True)
    for case in sorted(p for p in cases.iterdir() if p.is_dir())[:2]:  # two cases are enough to show it runs
        shutil.copytree(case, work / "cases" / case.name)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    located = subprocess.run(
        [str(python), "-c", "import monai_protoshare; print(monai_protoshare.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert not located.stdout.strip().startswith(str(REPO)), located.stdout  # the wheel's copy, not the repository
    command = [str(python), "-m", "monai.bundle", "run", "--config_file", str(bundle / "configs" / "inference.yaml")]
    command += [
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(work / "cases"),
        "--output_dir",
        str(work / "out"),
        *TINY,
    ]
    result = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return list(csv.DictReader(open(work / "out" / "predictions.csv")))


def test_wheel_installs_apart_from_the_repository_and_runs_a_bundle(tmp_path, bundle_cohort):
    dist = _build(tmp_path, "wheel")
    wheel = next(dist.glob("monai_protoshare-*.whl"))
    python = _venv(tmp_path / "venv")
    site = Path(sysconfig.get_paths()["purelib"])  # this environment's dependencies, appended after the wheel's
    venv_site = next((tmp_path / "venv" / "lib").glob("python*/site-packages"))
    (venv_site / "project_dependencies.pth").write_text(str(site) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    rows = _run_inference(python, tmp_path, bundle_cohort)
    assert len(rows) == 2 and {"subject_id", "prediction"} <= set(rows[0])


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a fresh environment: torch and every dependency are installed (15-30 min on 2 cores)
def test_wheel_and_sdist_install_into_a_fresh_environment_with_their_dependencies(tmp_path, bundle_cohort):
    dist = _build(tmp_path, "wheel", "sdist")
    assert next(dist.glob("monai_protoshare-*.tar.gz"))
    python = _venv(tmp_path / "venv")
    env = {**os.environ, "PIP_CONSTRAINT": str(REPO / "constraints.txt")}
    for args in (["torch==2.13.0"], [str(next(dist.glob("monai_protoshare-*.whl")))]):
        subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", "--no-compile", *args], check=True, env=env, timeout=1800
        )
    rows = _run_inference(python, tmp_path, bundle_cohort)
    assert len(rows) == 2
