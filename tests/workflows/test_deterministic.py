"""The demo's --deterministic mode re-runs the command once under pinned CPU kernels and one thread."""

from __future__ import annotations

import os
import sys

import pytest
import torch

from monai_protoshare.workflows import demo, deterministic
from monai_protoshare.workflows.deterministic import DETERMINISTIC_ENV, reexec_deterministic


class Exec(Exception):
    """Raised by the fake ``os.execve`` so the test process is not replaced."""


def test_outside_the_mode_the_command_reruns_itself_with_the_pinned_environment(monkeypatch):
    calls = []

    def fake_execve(path, args, env):
        calls.append((path, args, env))
        raise Exec

    for key in DETERMINISTIC_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(deterministic.os, "execve", fake_execve)
    with pytest.raises(Exec):
        demo.main(["--deterministic", "--fold", "2"])
    ((path, args, env),) = calls
    assert path == sys.executable and args[1:] == [
        "-m",
        "monai_protoshare.workflows.demo",
        "--deterministic",
        "--fold",
        "2",
    ]
    assert {k: env[k] for k in DETERMINISTIC_ENV} == DETERMINISTIC_ENV
    assert (
        env["ATEN_CPU_CAPABILITY"] == "avx2" and env["ONEDNN_MAX_CPU_ISA"] == "AVX2" and env["OMP_NUM_THREADS"] == "1"
    )
    assert env.get("PATH") == os.environ.get("PATH")  # the rest of the environment is kept


def test_inside_the_mode_the_command_runs_on_one_thread_without_rerunning(monkeypatch):
    for key, value in DETERMINISTIC_ENV.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(deterministic.os, "execve", lambda *a: pytest.fail("re-ran inside the mode"))
    threads = torch.get_num_threads()
    try:
        reexec_deterministic("monai_protoshare.workflows.demo", ["--deterministic"])
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(threads)
