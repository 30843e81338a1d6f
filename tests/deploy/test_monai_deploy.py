"""End to end: the MONAI Deploy app (deploy/monai_deploy) on a synthetic DICOM study and on four NIfTI files.

Runs in deploy/.venv-deploy (``bash deploy/ci.sh``); skipped where the MONAI Deploy App SDK is not installed.
Each app run is a real ``python deploy/monai_deploy/app.py -i ... -o ...`` subprocess on the tiny bundle.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip(
    "monai.deploy.operators.monai_bundle_inference_operator", reason="MONAI Deploy App SDK not installed"
)

from tests.deploy.conftest import REPO  # noqa: E402
from tests.deploy.helpers import reference_probabilities  # noqa: E402

APP = REPO / "deploy" / "monai_deploy" / "app.py"
sys.path.insert(0, str(APP.parent))
import umps_operators  # noqa: E402

CLASSES = ("LGG", "HGG")


def _raise_stack_limit() -> None:
    """Holoscan asks for a 32 MB stack (``ulimit -s 32768``)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
    wanted = 32 * 1024 * 1024
    if soft != resource.RLIM_INFINITY and soft < wanted and (hard == resource.RLIM_INFINITY or hard >= wanted):
        resource.setrlimit(resource.RLIMIT_STACK, (wanted, hard))


def run_app(input_folder: Path, output_folder: Path, bundle: Path, **env: str) -> tuple[dict, float]:
    """Run the app as a user does; return result.json and the wall time in seconds."""
    environ = {**os.environ, "UMPS_BUNDLE_PATH": str(bundle), "UMPS_THREADS": "2", **env}
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, str(APP), "-i", str(input_folder), "-o", str(output_folder)],
        env=environ,
        capture_output=True,
        text=True,
        timeout=600,
        preexec_fn=_raise_stack_limit,
        cwd=output_folder.parent,
    )
    seconds = time.perf_counter() - start
    assert done.returncode == 0, f"app exited with {done.returncode}:\n{(done.stdout + done.stderr)[-4000:]}"
    print(f"deploy app latency ({input_folder.name}): {seconds:.1f} s")
    return json.loads((output_folder / umps_operators.RESULT_NAME).read_text(encoding="utf-8")), seconds


def assert_same_grid(path: Path, reference: nib.Nifti1Image) -> nib.Nifti1Image:
    image = nib.load(path)
    assert image.shape == reference.shape[:3], path
    np.testing.assert_allclose(image.affine, reference.affine, atol=1e-3)
    return image


def assert_class(result: dict, bundle: Path, files: list[str]) -> None:
    expected = reference_probabilities(bundle, files)
    got = np.array([result["probabilities"][name] for name in CLASSES])
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert abs(got.sum() - 1) < 1e-5  # a softmax over the classes, not over the batch axis
    assert result["prediction"] == CLASSES[int(np.argmax(expected))]
    assert result["evidence_agrees"]


def test_nifti_case(tiny_bundle, nifti_cohort, tmp_path):
    case = nifti_cohort / "BraTS20_Training_001"
    files = [str(case / f"BraTS20_Training_001_{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")]
    result, _ = run_app(case, tmp_path / "out", tiny_bundle, UMPS_FIGURES="0")
    assert result["subject_id"] == "BraTS20_Training_001" and result["input_kind"] == "nifti"
    assert_class(result, tiny_bundle, files)
    out = tmp_path / "out"
    t1ce = nib.load(files[1])
    overlay = assert_same_grid(out / result["evidence_files"]["label_overlay"], t1ce)
    assert overlay.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(overlay.dataobj))) <= {0, 1}
    assert np.asarray(overlay.dataobj).any()
    assert_same_grid(out / result["evidence_files"]["class_evidence"], t1ce)
    for name in result["evidence_files"]["prototype_maps"]:
        assert_same_grid(out / name, t1ce)
    report = json.loads((out / result["evidence_folder"] / "report.json").read_text(encoding="utf-8"))
    assert report["prediction"] == result["prediction"]
    assert "dicom_seg" not in result["evidence_files"]


def test_dicom_study(tiny_bundle, tmp_path):
    import pydicom

    from data_prep.dicom_study_writer import write_synthetic_brain_study

    # four MR series on their own grids plus a localiser, DWI and ADC that identification must drop
    study = write_synthetic_brain_study(tmp_path / "STUDY01", spacing=6.0, distractors=True)
    out = tmp_path / "out"
    result, _ = run_app(study.folder, out, tiny_bundle, UMPS_SKULL_STRIP="off", UMPS_REGISTRATION_SPACING="3.0")
    assert result["subject_id"] == "STUDY01" and result["input_kind"] == "dicom"

    # channels [T1, T1-CE, T2, FLAIR] come from the right series
    prepared = out / "prepared" / "STUDY01"
    record = json.loads((prepared / "STUDY01_data_prep.json").read_text(encoding="utf-8"))
    for sequence in ("t1", "t1ce", "t2", "flair"):
        assert record["sequences"][sequence]["source"]["identification"]["series_uid"] == study.series[sequence]
    files = [str(prepared / f"STUDY01_{s}.nii.gz") for s in ("t1", "t1ce", "t2", "flair")]
    assert_class(result, tiny_bundle, files)

    # overlays on the model input's grid and on the T1-CE series' own grid
    overlay = assert_same_grid(out / result["evidence_files"]["label_overlay"], nib.load(files[1]))
    original = record["sequences"]["t1ce"]["original"]
    native = nib.load(out / result["evidence_files"]["original_t1ce"]["label_overlay"])
    assert list(native.shape) == original["shape"]
    np.testing.assert_allclose(native.affine, original["affine_ras"], atol=1e-3)
    assert np.asarray(overlay.dataobj).any() and np.asarray(native.dataobj).any()

    # the DICOM SEG lies on the T1-CE series of the same study
    seg = pydicom.dcmread(out / result["evidence_files"]["dicom_seg"])
    source = pydicom.dcmread(next(p for p in sorted(study.folder.rglob("*")) if p.is_file()), stop_before_pixels=True)
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == study.series["t1ce"]
    assert seg.SegmentSequence[0].SegmentLabel == "Prototype evidence"


def test_find_nifti_case(tmp_path):
    case = tmp_path / "CASE7"
    case.mkdir()
    for sequence in ("t1", "t1ce", "t2"):
        (case / f"CASE7_{sequence}.nii.gz").write_bytes(b"")
    with pytest.raises(ValueError, match=r"\*_flair\.nii\[\.gz\]"):
        umps_operators.find_nifti_case(tmp_path)
    (case / "CASE7_flair.nii").write_bytes(b"")
    found = umps_operators.find_nifti_case(tmp_path)
    assert found.subject_id == "CASE7" and [Path(f).name for f in found.files] == [
        "CASE7_t1.nii.gz", "CASE7_t1ce.nii.gz", "CASE7_t2.nii.gz", "CASE7_flair.nii",
    ]  # fmt: skip
    assert umps_operators.find_nifti_case(tmp_path / "CASE7") == found
    empty = tmp_path / "dicom_only"
    empty.mkdir()
    assert umps_operators.find_nifti_case(empty) is None


def test_prep_options():
    assert umps_operators.prep_options({}).skull_strip is None
    options = umps_operators.prep_options({"UMPS_SKULL_STRIP": "off", "UMPS_REGISTRATION_SPACING": "3"})
    assert options.skull_strip is False and options.registration_spacing == 3.0
    with pytest.raises(ValueError, match="off"):
        umps_operators.prep_options({"UMPS_SKULL_STRIP": "of"})
    with pytest.raises(ValueError, match="UMPS_THREADS"):
        umps_operators.prep_options({"UMPS_THREADS": "two"})


def test_result_uses_argmax_not_the_sdk_labels(tmp_path):
    """The SDK labels probabilities [0.41, 0.59] as ['LGG', 'LGG'] (class of int(p)); the result says HGG."""
    pred = {"result": ["LGG", "LGG"], "probabilities": np.array([0.41, 0.59], dtype=np.float32)}
    report = {"subject_id": "c1", "prediction": "HGG", "files": {"label_overlay": "evidence_label.nii.gz"}}
    result = umps_operators.classification_result(pred, report, tmp_path / "evidence" / "c1", tmp_path, CLASSES)
    assert result["prediction"] == "HGG" and result["evidence_agrees"]
    assert result["probabilities"] == pytest.approx({"LGG": 0.41, "HGG": 0.59})
    assert result["evidence_files"]["label_overlay"] == "evidence/c1/evidence_label.nii.gz"
    report_lgg = {**report, "prediction": "LGG"}
    assert not umps_operators.classification_result(pred, report_lgg, tmp_path, tmp_path, CLASSES)["evidence_agrees"]
    with pytest.raises(ValueError, match="one value per class"):
        umps_operators.classification_result({"probabilities": np.ones(3)}, report, tmp_path, tmp_path, CLASSES)
