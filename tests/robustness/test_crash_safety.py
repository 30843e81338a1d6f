"""SIGKILL at chosen and random moments: training resumes to the very same weights; evidence export and data_prep
leave no half-written file and resume by skipping the finished cases.

Each job runs in a child process (:mod:`tests.robustness.kill_points`) in its own session, killed as a whole
group, like a machine that loses power or an out-of-memory kill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import pytest
import SimpleITK as sitk
import torch

from data_prep.batch import FAILURES_FILE, cases_from_manifest, run_batch
from data_prep.brats_layout import is_complete
from data_prep.dicom_study_writer import write_synthetic_brain_study
from data_prep.pipeline import PrepOptions
from monai_protoshare.data.synthetic import generate_cohort
from monai_protoshare.workflows.export_evidence import SUMMARY_NAME, export_evidence
from tests.explain.evidence_cases import image_transform, tiny_network, write_case

from .conftest import TINY, record

REPO = Path(__file__).resolve().parents[2]
#: the bundle tests' tiny settings, with stage 3 on cached push similarities (the cpu_small preset's choice):
#: 6 epochs = 2 warm-up, 2 stage-1, a push after epoch 4, 2 stage-3
TRAIN_OVERRIDES = {**TINY, "classifier_inputs": "cached"}
START_TIMEOUT_S = 120


def _spawn(*arguments: str) -> subprocess.Popen:
    """Start ``kill_points <arguments>`` (``arguments[3]`` is the marker); its output goes to ``<marker>.log``."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with open(f"{arguments[3]}.log", "ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "tests.robustness.kill_points", *arguments],
            cwd=REPO,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # one process group: the job and its workers die together
        )


def _log(process: subprocess.Popen) -> str:
    return Path(f"{process.args[6]}.log").read_text(errors="replace")[-3000:]


def _kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def _wait_for(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended (status {process.returncode}) before {what}:\n{_log(process)}")
        if time.monotonic() > deadline:
            _kill(process)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _run_to_pause(marker: Path, *arguments: str) -> str:
    """Start the job, wait until it reports its pause point, SIGKILL it; return the point."""
    marker.unlink(missing_ok=True)
    process = _spawn(*arguments)
    _wait_for(process, marker.exists, f"the pause at {arguments[4]}")
    time.sleep(0.05)  # the marker's text is written before the job sleeps
    _kill(process)
    return marker.read_text()


def _run_to_end(*arguments: str) -> None:
    process = _spawn(*arguments)
    process.wait(timeout=300)
    assert process.returncode == 0, _log(process)


@pytest.fixture(scope="module")
def train_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten cases at 6 mm, half of each grade (the bundle tests' cohort)."""
    return generate_cohort(
        tmp_path_factory.mktemp("kill_cohort"), n_cases=10, seed=1, spacing=6.0, lgg_fraction=0.5, progress=False
    )


def _checkpoint_epoch(path: Path) -> int:
    """Last completed epoch recorded in a training checkpoint (Ignite saves the iteration)."""
    trainer = torch.load(path, weights_only=True)["trainer"]
    return int(trainer["iteration"]) // int(trainer["epoch_length"])


def _hidden_leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*"))


def test_training_killed_at_push_checkpoint_write_random_moment_and_model_write_resumes_to_the_same_weights(
    train_cohort, tmp_path
):
    overrides = json.dumps(TRAIN_OVERRIDES)
    reference, resumed = tmp_path / "reference", tmp_path / "resumed"
    marker = tmp_path / "marker"
    _run_to_end("train", str(train_cohort), str(reference), str(marker), "", overrides)

    checkpoint = resumed / "fold0" / "checkpoints" / "checkpoint.pt"
    arguments = ("train", str(train_cohort), str(resumed), str(marker))
    kills = []
    # the push after epoch 4: the prototypes are replaced in memory, the checkpoint of epoch 3 is the last on disk
    kills.append((_run_to_pause(marker, *arguments, "push:4", overrides), _checkpoint_epoch(checkpoint)))
    # half of epoch 5's checkpoint written (epoch 5 is stage 3 on cached similarities: the resumed run must
    # recompute them, as the push that made them was in the killed run)
    kills.append((_run_to_pause(marker, *arguments, "checkpoint:5", overrides), _checkpoint_epoch(checkpoint)))
    # a random moment of the remaining epochs
    epoch_file = Path(f"{marker}.epoch")
    epoch_file.unlink(missing_ok=True)
    process = _spawn(*arguments, "", overrides)
    _wait_for(process, epoch_file.exists, "the first epoch of the resumed run")
    time.sleep(random.Random(10).uniform(0.0, 1.5))
    ended = process.poll() is not None
    if not ended:
        _kill(process)
    kills.append((f"random ({'finished first' if ended else 'killed'})", _checkpoint_epoch(checkpoint)))
    # half of model.pt written (the run had finished or resumes the last epochs)
    kills.append((_run_to_pause(marker, *arguments, "model", overrides), _checkpoint_epoch(checkpoint)))
    _run_to_end(*arguments, "", overrides)

    expected = torch.load(reference / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    final = torch.load(resumed / "fold0" / "checkpoints" / "model.pt", weights_only=True)
    assert set(final) == set(expected)
    different = [key for key in expected if not torch.equal(final[key], expected[key])]
    assert not different, f"tensors differ after resuming: {different}"
    assert json.loads((resumed / "fold0" / "prototypes.json").read_text()) == json.loads(
        (reference / "fold0" / "prototypes.json").read_text()
    )
    assert [k[1] for k in kills[:2]] == [3, 4]  # the checkpoint on disk when each kill happened
    assert _hidden_leftovers(resumed / "fold0" / "checkpoints") == []  # no temporary file of a killed write
    record(
        "SIGKILL during training: " + "; ".join(f"{point} (checkpoint epoch {epoch})" for point, epoch in kills),
        "training (bundle, TrainingCheckpointHandler)",
        f"resumed and finished; all {len(expected)} tensors of model.pt equal to the uninterrupted run's",
    )


def test_evidence_export_killed_mid_case_leaves_no_case_folder_and_resumes_by_skipping(tmp_path):
    data = tmp_path / "data"
    datalist = [write_case(data, f"case00{i}", label=i % 2, seed=i) for i in range(1, 4)]
    datalist_json = tmp_path / "datalist.json"
    datalist_json.write_text(json.dumps(datalist))
    out, marker = tmp_path / "evidence", tmp_path / "marker"

    assert _run_to_pause(marker, "evidence", str(datalist_json), str(out), str(marker), "case002") == "evidence:case002"
    assert (out / "case001" / "report.json").is_file()
    assert not (out / "case002").exists() and not (out / "case003").exists()
    assert [p.name.startswith(".case002.partial-") for p in out.iterdir() if p.name.startswith(".")] == [True]

    summary = export_evidence(tiny_network(), datalist, image_transform(), out, top_k=2, figures=False, progress=False)
    assert summary.skipped == ["case001"] and summary.written == ["case002", "case003"] and not summary.failed
    assert _hidden_leftovers(out) == []
    fresh = export_evidence(
        tiny_network(), datalist, image_transform(), tmp_path / "fresh", top_k=2, figures=False, progress=False
    )
    assert not fresh.failed
    for item in datalist:
        case = item["subject_id"]
        report = json.loads((out / case / "report.json").read_text())
        assert report == json.loads((tmp_path / "fresh" / case / "report.json").read_text())
        for name in [report["files"]["class_evidence"], *report["files"]["prototype_maps"]]:
            assert nib.load(out / case / name).shape == nib.load(item["image"][1]).shape
    assert json.loads((out / SUMMARY_NAME).read_text())["skipped"] == ["case001"]
    record(
        "SIGKILL during evidence export of case002 (2 of its NIfTI files written)",
        "evidence export",
        "case001 complete, no case002/case003 folder; re-run skipped case001, wrote case002-003, "
        "reports equal to an uninterrupted export",
    )


def test_data_prep_killed_mid_case_leaves_no_case_folder_and_resumes_by_skipping(tmp_path):
    study = write_synthetic_brain_study(tmp_path / "study", spacing=6.0, distractors=False)
    rows = ["subject_id,t1,t1ce,t2,flair"]
    for subject in ("P1", "P2"):
        for sequence, image in study.images.items():
            sitk.WriteImage(image, str(tmp_path / f"{subject}_{sequence}.nii.gz"))
        rows.append(",".join([subject, *(f"{subject}_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair"))]))
    manifest = tmp_path / "cases.csv"
    manifest.write_text("\n".join(rows) + "\n")
    out, marker = tmp_path / "out", tmp_path / "marker"

    assert _run_to_pause(marker, "data_prep", str(manifest), str(out), str(marker), "P2") == "data_prep:P2"
    assert is_complete(out, "P1") and not (out / "P2").exists()
    assert [p.name for p in out.iterdir() if p.name.startswith(".partial-P2-")]  # its working folder, hidden

    summary = run_batch(cases_from_manifest(manifest), out, PrepOptions(skull_strip=False, registration_spacing=3.0))
    assert summary.skipped == ["P1"] and summary.done == ["P2"] and not summary.failed
    assert not [p for p in out.iterdir() if p.name.startswith(".")]
    for subject in ("P1", "P2"):
        for sequence in ("t1", "t1ce", "t2", "flair"):
            assert nib.load(out / subject / f"{subject}_{sequence}.nii.gz").get_fdata().any()
    assert (out / "name_mapping.csv").read_text().splitlines()[1:] == ["NA,NA,NA,NA,NA,P1", "NA,NA,NA,NA,NA,P2"]
    assert json.loads((out / FAILURES_FILE).read_text())["skipped"] == ["P1"]
    record(
        "SIGKILL during data_prep batch, case P2 written but not its record",
        "data_prep batch",
        "P1 complete, no P2 folder (hidden .partial-P2-* only); re-run removed it, skipped P1, prepared P2",
    )
