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
last completed epoch while training), then sleeps until killed.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from pathlib import Path

_PAUSE_SECONDS = 600


def _pause(marker: Path, what: str) -> None:
    marker.write_text(what)
    time.sleep(_PAUSE_SECONDS)
    raise SystemExit(f"not killed within {_PAUSE_SECONDS} s at {what}")


def _half(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def train(dataset_dir: str, output_dir: str, marker: str, pause: str, overrides: str) -> None:
    import torch
    from ignite.engine import Events

    from monai_protoshare.handlers import checkpoint, push
    from monai_protoshare.workflows.demo import DEFAULT_BUNDLES_DIR, bundle_workflow

    torch.set_num_threads(1)
    marker_path = Path(marker)
    point, _, value = pause.partition(":")
    saving = {"epoch": 0}

    real_push = push.push_prototypes

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

    push.push_prototypes = push_then_pause
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
