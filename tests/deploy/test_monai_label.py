"""End to end: the MONAI Label app (deploy/monai_label) served on loopback, /info/ and /infer over HTTP.

Runs in deploy/.venv-label (``bash deploy/ci.sh``); skipped where MONAI Label is not installed. The server is
started by ``deploy/monai_label/serve.sh`` (its default bind is 127.0.0.1) on a free port, polled on
``/info/``, asked for one inference, refused image ids that leave the studies folder, and stopped by its pid.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

pytest.importorskip("monailabel", reason="MONAI Label not installed")
requests = pytest.importorskip("requests")
from requests_toolbelt.multipart.decoder import MultipartDecoder  # noqa: E402

from tests.deploy.conftest import REPO  # noqa: E402
from tests.deploy.helpers import reference_probabilities  # noqa: E402

SERVE = REPO / "deploy" / "monai_label" / "serve.sh"
SEQUENCES = ("t1", "t1ce", "t2", "flair")
CLASSES = ("LGG", "HGG")
START_TIMEOUT_S = 240


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _listening_addresses(port: int) -> set[str]:
    """Local IPv4 addresses listening on ``port`` (from /proc/net/tcp: state 0A = LISTEN)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


@pytest.fixture(scope="module")
def studies(nifti_cohort, tmp_path_factory) -> Path:
    """A flat studies folder with the four sequences of two cases, and a case outside it."""
    root = tmp_path_factory.mktemp("label")
    folder = root / "studies"
    folder.mkdir()
    for case in ("BraTS20_Training_001", "BraTS20_Training_002"):
        for sequence in SEQUENCES:
            shutil.copy(nifti_cohort / case / f"{case}_{sequence}.nii.gz", folder)
    for sequence in SEQUENCES:  # readable by the server process, but outside the studies folder
        shutil.copy(nifti_cohort / "BraTS20_Training_002" / f"BraTS20_Training_002_{sequence}.nii.gz",
                    root / f"outside_{sequence}.nii.gz")  # fmt: skip
    return folder


@pytest.fixture(scope="module")
def server(studies, tiny_bundle):
    """The server process and its base URL; stopped by its process id afterwards."""
    port = _free_port()
    log = open(studies.parent / "server.log", "w")  # noqa: SIM115 (closed below)
    environ = {**os.environ, "LABEL_VENV": str(Path(sys.executable).parent.parent), "MONAILABEL_PYEXE": sys.executable}
    environ.pop("HOST", None)  # the default bind under test
    process = subprocess.Popen(
        ["bash", str(SERVE), str(studies), "--port", str(port), "--conf", "bundle", str(tiny_bundle),
         "--conf", "device", "cpu"],
        stdout=log, stderr=subprocess.STDOUT, cwd=studies.parent, env=environ, start_new_session=True,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    start = time.perf_counter()
    try:
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"server exited with {process.returncode}:\n{(studies.parent / 'server.log').read_text()[-4000:]}"
                )
            try:
                if requests.get(f"{url}/info/", timeout=5).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.perf_counter() - start > START_TIMEOUT_S:
                pytest.fail(f"/info/ did not answer in {START_TIMEOUT_S} s")
            time.sleep(0.5)
        print(f"label server: /info/ answered after {time.perf_counter() - start:.1f} s")
        yield process, url, port
    finally:
        if process.poll() is None:
            os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=30)
        log.close()


def test_server_binds_loopback_only(server):
    _, url, port = server
    assert _listening_addresses(port) == {"127.0.0.1"}
    info = requests.get(f"{url}/info/", timeout=10).json()
    model = info["models"]["um_protoshare"]
    assert model["type"] == "segmentation" and model["labels"] == {"prototype_evidence": 1}
    assert model["classes"] == list(CLASSES)


def test_infer_returns_class_json_and_label_volume(server, studies, tiny_bundle, tmp_path):
    _, url, _ = server
    start = time.perf_counter()
    response = requests.post(
        f"{url}/infer/um_protoshare", params={"image": "BraTS20_Training_001_t1ce", "output": "all"}, timeout=300
    )
    seconds = time.perf_counter() - start
    assert response.status_code == 200, response.text[:2000]
    print(f"label /infer latency: {seconds:.2f} s")
    parts = {}
    for part in MultipartDecoder.from_response(response).parts:
        disposition = part.headers[b"Content-Disposition"].decode()
        parts["params" if 'name="params"' in disposition else "image"] = part.content
    result = json.loads(parts["params"])

    files = [str(studies / f"BraTS20_Training_001_{s}.nii.gz") for s in SEQUENCES]
    expected = reference_probabilities(tiny_bundle, files)
    np.testing.assert_allclose([result["probabilities"][c] for c in CLASSES], expected, atol=1e-4)
    assert result["prediction"] == CLASSES[int(np.argmax(expected))]
    assert result["subject_id"] == "BraTS20_Training_001"
    assert result["label_names"] == {"prototype_evidence": 1}
    assert len(result["top_prototypes"]) == 5

    label_file = tmp_path / "label.nii.gz"
    label_file.write_bytes(parts["image"])
    label, t1ce = nib.load(label_file), nib.load(files[1])
    assert label.shape == t1ce.shape
    np.testing.assert_allclose(label.affine, t1ce.affine, atol=1e-3)
    values = np.asarray(label.dataobj)
    assert label.get_data_dtype() == np.uint8 and set(np.unique(values)) == {0, 1}
    assert int(values.sum()) == result["overlay"]["voxels"]


@pytest.mark.parametrize(
    "image, params, status",
    [
        ("../outside_t1ce", None, 403),  # leaves the studies folder
        ("..", None, 403),
        ("{outside}", None, 403),  # an absolute path to an existing file
        ("BraTS20_Training_001_t1ce", {"image": "{outside}"}, 403),  # the same, smuggled in params
        ("no_such_case_t1ce", None, 404),
    ],
)
def test_infer_refuses_images_outside_the_studies(server, studies, image, params, status):
    _, url, _ = server
    outside = str(studies.parent / "outside_t1ce.nii.gz")
    query = {"image": image.format(outside=outside), "output": "json"}
    data = {"params": json.dumps({k: v.format(outside=outside) for k, v in params.items()})} if params else None
    response = requests.post(f"{url}/infer/um_protoshare", params=query, data=data, timeout=120)
    assert response.status_code == status, response.text[:500]
