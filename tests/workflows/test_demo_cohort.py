"""The demo's synthetic cohort is kept for later runs, and regenerated when it was written differently."""

from __future__ import annotations

import json

from monai_protoshare.data.synthetic import GENERATOR_VERSION
from monai_protoshare.workflows import demo


def test_demo_cohort_is_reused_only_when_written_by_this_generator_with_these_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(demo, "generate_cohort", _small(demo.generate_cohort))
    path = tmp_path / "demo_cohort"
    demo._demo_cohort(path, cases=2, seed=0)
    info_file = path / "synthetic_cohort.json"
    info = json.loads(info_file.read_text())
    assert info["version"] == GENERATOR_VERSION and info["n_cases"] == 2
    written = info_file.stat().st_mtime_ns

    demo._demo_cohort(path, cases=2, seed=0)  # same settings: reused as it is
    assert info_file.stat().st_mtime_ns == written

    info_file.write_text(json.dumps({**info, "version": GENERATOR_VERSION - 1}))  # a cohort of an older release
    demo._demo_cohort(path, cases=2, seed=0)
    assert json.loads(info_file.read_text())["version"] == GENERATOR_VERSION

    demo._demo_cohort(path, cases=2, seed=1)  # another seed: regenerated too
    assert json.loads(info_file.read_text())["seed"] == 1


def _small(generate):
    """The generator at a coarse spacing, so that the test takes a second."""
    return lambda path, **kwargs: generate(path, spacing=12.0, progress=False, **kwargs)
