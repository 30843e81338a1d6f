"""Subprocess entry points of the crash-safety tests: run a real job and, at a chosen point, say so and wait to be
killed with SIGKILL. The pauses are monkeypatched here, in the child process; the library has no test hooks.

    python -m tests.robustness.kill_points train <dataset_dir> <output_dir> <marker> <pause> <json overrides>
        pause: "push:<epoch>" (the push after that epoch has replaced the prototypes in memory, nothing of it
        saved), "checkpoint:<epoch>" (half of that epoch's checkpoint written to its temporary file),
        "model" (half of model.pt written), "" (no pause)
    python -m tests.robustness.kill_points evidence <datalist.json> <output_dir> <marker> <subject>
        pause after the first two NIfTI files of <subject>'s evidence are written
    python -m tests.robustness.kill_points data_prep <manifest.csv> <out> <marker> <subject>
        pause after <subject>'s four volumes are written, before its record

The child writes ``<marker>`` with the pause's name when it reaches the point (and ``<marker>.epoch`` with the
last completed epoch while training), then sleeps until killed. The tests drive the children with :func:`spawn`,
:func:`run_to_pause`, :func:`run_to_end` and :func:`kill` (SIGKILL to the child's whole process group, its pool
workers included, like a power cut or an out-of-memory kill).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT_S = 120
_PAUSE_SECONDS = 600


# ------------------------------------------------------------------ the test's side
def spawn(*arguments: str) -> subprocess.Popen:
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


def kill(process: subprocess.Popen) -> None:
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


def wait_for(process: subprocess.Popen, condition, what: str) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not condition():
        if process.poll() is not None:
            raise AssertionError(f"the job ended (status {process.returncode}) before {what}:\n{_log(process)}")
        if time.monotonic() > deadline:
            kill(process)
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def run_to_pause(marker: Path, *arguments: str) -> str:
    """Start the job, wait until it reports its pause point, SIGKILL it; return the point."""
    marker.unlink(missing_ok=True)
    process = spawn(*arguments)
    wait_for(process, marker.exists, f"the pause at {arguments[4]}")
    kill(process)
    return marker.read_text()


def run_to_end(*arguments: str) -> None:
    """Run the job to its end (no pause) and check it succeeded."""
    process = spawn(*arguments)
    try:
        process.wait(timeout=300)
    finally:
        if process.poll() is None:
            kill(process)
    assert process.returncode == 0, _log(process)


# ------------------------------------------------------------------ the child's side
def _pause(marker: Path, what: str) -> None:
    tmp = marker.with_name(marker.name + ".tmp")
    tmp.write_text(what)
    os.replace(tmp, marker)  # the test never reads a half-written marker
    time.sleep(_PAUSE_SECONDS)
    raise SystemExit(f"not killed within {_PAUSE_SECONDS} s at {what}")


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train(dataset_dir: str, output_dir: str, marker: str, pause: str, overrides: str) -> None:
    import torch
    from ignite.engine import Events

    from monai_protoshare.engines import prototype_trainer
    from monai_protoshare.handlers import checkpoint
    from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow

    torch.set_num_threads(1)
    marker_path = Path(marker)
    point, _, value = pause.partition(":")
    saving = {"epoch": 0}

    real_push = prototype_trainer.push_prototypes

    def push_then_pause(network, data_loader, device, epoch=-1, **kwargs):
        result = real_push(network, data_loader, device, epoch=epoch, **kwargs)
        if point == "push" and epoch == int(value):
            _pause(marker_path, pause)
        return result

    real_save = checkpoint.TrainingCheckpointHandler.save

    def save(self, engine):
        saving["epoch"] = engine.state.epoch
        real_save(self, engine)

    real_atomic = checkpoint.atomic_path

    @contextlib.contextmanager
    def atomic_then_pause(path, suffix=None):
        with real_atomic(path, suffix) as tmp:
            yield tmp
            name = Path(path).name
            if (point == "checkpoint" and name == "checkpoint.pt" and saving["epoch"] == int(value)) or (
                point == "model" and name == "model.pt"
            ):
                _half(tmp)  # the write is under way: half of the new file is on disk
                _pause(marker_path, pause)

    prototype_trainer.push_prototypes = push_then_pause
    checkpoint.TrainingCheckpointHandler.save = save
    checkpoint.atomic_path = atomic_then_pause

    values = {**json.loads(overrides), "dataset_dir": dataset_dir, "output_dir": output_dir, "fold": 0}
    workflow = bundle_workflow(DEFAULT_BUNDLES_DIR / "um_protoshare", ["train.yaml"], **values)
    trainer = workflow.parser.get_parsed_content("train#trainer")
    epoch_file = Path(f"{marker}.epoch")
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda engine: epoch_file.write_text(str(engine.state.epoch)))
    workflow.run()
    workflow.finalize()


def evidence(datalist_json: str, output_dir: str, marker: str, subject: str) -> None:
    import torch

    from monai_protoshare.explain import evidence_writer
    from monai_protoshare.workflows.export_evidence import export_evidence
    from tests.explain.evidence_cases import image_transform, tiny_network

    torch.set_num_threads(1)
    real_write = evidence_writer.write_nifti
    written = []

    def write_then_pause(path, data, reference):
        out = real_write(path, data, reference)
        if f".{subject}." in str(path):  # inside the case's staging folder
            written.append(path)
            if len(written) == 2:
                _pause(Path(marker), f"evidence:{subject}")
        return out

    evidence_writer.write_nifti = write_then_pause
    datalist = json.loads(Path(datalist_json).read_text())
    export_evidence(tiny_network(), datalist, image_transform(), output_dir, top_k=2, figures=False, progress=False)


def pausing_worker(case, out_root, options):
    """``run_batch`` worker (runs in a pool process): prepare ``case``; pause in the named case before its record."""
    from data_prep import batch, pipeline

    if case.subject_id == os.environ["KILL_POINTS_SUBJECT"]:
        real_write_json = pipeline.write_json

        def write_json_then_pause(path, obj):
            _pause(Path(os.environ["KILL_POINTS_MARKER"]), f"data_prep:{case.subject_id}")
            return real_write_json(path, obj)

        pipeline.write_json = write_json_then_pause
    return batch._prepare_one(case, out_root, options)


def data_prep(manifest: str, out: str, marker: str, subject: str) -> None:
    from data_prep.batch import cases_from_manifest, run_batch
    from data_prep.pipeline import PrepOptions

    os.environ.update(KILL_POINTS_SUBJECT=subject, KILL_POINTS_MARKER=marker)
    options = PrepOptions(skull_strip=False, registration_spacing=3.0, threads=1)
    run_batch(cases_from_manifest(manifest), out, options, workers=1, worker=pausing_worker)


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    {"train": train, "evidence": evidence, "data_prep": data_prep}[command](*arguments)
