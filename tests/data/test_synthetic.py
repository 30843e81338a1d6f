"""Synthetic cohort: BraTS layout, dtypes, labels, affine, determinism; version 3's anatomy and its lack of shortcuts.

Version 2's own cues are tested in ``test_synthetic_v2.py``.
"""

from __future__ import annotations

import csv
import json
import math
import time

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from monai_protoshare.data import synthetic
from monai_protoshare.data.synthetic import (
    NAME_MAPPING_COLUMNS,
    SEQUENCES,
    brats_like_affine,
    cohort_design,
    default_shape,
    generate_case,
    generate_cohort,
)
from monai_protoshare.data.synthetic_anatomy import Push, load_atlas

from .conftest import TINY_SPACING

T1, T1CE, T2, FLAIR = range(4)


def test_release_geometry_is_reproduced_at_1mm_and_scaled_at_2mm():
    assert default_shape(1.0) == (240, 240, 155)
    assert default_shape(2.0) == (120, 120, 78)
    release = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(brats_like_affine(1.0, (240, 240, 155)), release)
    affine = brats_like_affine(2.0, (120, 120, 78))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    # Same field of view: the voxel centres span 238 mm along y, like the release's 239 mm at 1 mm.
    np.testing.assert_allclose(affine @ [0, 119, 0, 1], [0, 0, 0, 1])


@pytest.fixture(scope="module")
def cohorts(tiny_cohort, tmp_path_factory):
    """The tiny cohort of both versions (version 3 is the default, written by the shared fixture)."""
    v2 = generate_cohort(
        tmp_path_factory.mktemp("v2"),
        n_cases=6,
        seed=0,
        spacing=TINY_SPACING,
        lgg_fraction=0.5,
        progress=False,
        version=2,
    )
    return {2: v2, 3: tiny_cohort}


@pytest.mark.parametrize("version", [2, 3])
def test_cohort_has_the_brats_layout_and_name_mapping(cohorts, version):
    root = cohorts[version]
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ids
    for sid in ids:
        names = sorted(p.name for p in (root / sid).iterdir())
        assert names == sorted(f"{sid}_{s}.nii.gz" for s in (*SEQUENCES, "seg"))
    with open(root / "name_mapping.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == NAME_MAPPING_COLUMNS
    assert [r[-1] for r in rows[1:]] == ids
    assert all(r[1:5] == ["NA"] * 4 and r[0] in ("HGG", "LGG") for r in rows[1:])
    assert sorted(r[0] for r in rows[1:]) == ["HGG"] * 3 + ["LGG"] * 3  # lgg_fraction 0.5 of 6
    info = json.loads((root / "synthetic_cohort.json").read_text())
    assert [c["grade"] for c in info["cases"]] == [r[0] for r in rows[1:]]
    assert info["version"] == version and info["ambiguous_fraction"] == {2: 0.15, 3: 0.2}[version]
    assert info["contrast_jitter"] == {2: 0.0, 3: 0.1}[version]


@pytest.mark.parametrize("version", [2, 3])
def test_files_have_brats_dtypes_labels_affine_and_zero_background(cohorts, version):
    shape = default_shape(TINY_SPACING)
    for case in sorted(p for p in cohorts[version].iterdir() if p.is_dir()):
        seg_img = nib.load(case / f"{case.name}_seg.nii.gz")
        seg = np.asarray(seg_img.dataobj)
        assert seg.dtype == np.uint8 and seg.shape == shape
        assert set(np.unique(seg)) <= {0, 1, 2, 4} and (seg > 0).any()
        brains = []
        for sequence in SEQUENCES:
            img = nib.load(case / f"{case.name}_{sequence}.nii.gz")
            data = np.asarray(img.dataobj)
            assert img.get_data_dtype() == np.float32 and data.shape == shape
            np.testing.assert_array_equal(img.affine, brats_like_affine(TINY_SPACING, shape))
            assert np.isfinite(data).all() and data.min() == 0
            brains.append(data > 0)
        # One skull-stripped brain: the same support in every sequence, holding the whole tumour.
        assert all((b == brains[0]).all() for b in brains)
        assert brains[0][seg > 0].all()
        assert 0.1 < brains[0].mean() < 0.3  # a 1.1-1.8 L brain in the 8.9 L field of view


@pytest.mark.parametrize("version", [2, 3])
def test_same_arguments_give_the_same_bytes_and_case_i_ignores_n(tmp_path, version):
    kwargs = dict(spacing=10.0, progress=False, version=version)
    a = generate_cohort(tmp_path / "a", n_cases=2, seed=3, **kwargs)
    b = generate_cohort(tmp_path / "b", n_cases=3, seed=3, **kwargs)
    c = generate_cohort(tmp_path / "c", n_cases=2, seed=4, **kwargs)
    for sid in ("BraTS20_Training_001", "BraTS20_Training_002"):
        for suffix in (*SEQUENCES, "seg"):
            name = f"{sid}/{sid}_{suffix}.nii.gz"
            assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    info_a, info_b = (json.loads((p / "synthetic_cohort.json").read_text())["cases"] for p in (a, b))
    assert info_a == info_b[:2]
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_lgg_count_follows_the_fraction_exactly_for_every_prefix():
    f = 76 / 369
    for seed in range(5):
        grades = [lgg for lgg, _ in cohort_design(369, seed, f)]
        assert sum(grades) == 76
        counts = np.cumsum(grades)
        assert all(abs(counts[n - 1] - n * f) < 1 for n in range(1, 370))


# ---------------------------------------------------------------------------------------------- version 3

STUDY_CASES, STUDY_SPACING = 100, 6.0


def _healthy_features(images: np.ndarray, seg: np.ndarray) -> list[float]:
    """Scale-free statistics of the brain outside the tumour: per sequence, intensity quantiles and spread over
    the median and a noise estimate (median neighbour difference over the median); brain volume and centroid."""
    brain = images[0] > 0
    healthy = brain & (seg == 0)
    features = []
    for image in images:
        values = image[healthy]
        median = np.median(values)
        features += list(np.percentile(values, [5, 25, 75, 95]) / median) + [values.std() / median]
        pairs = healthy[1:] & healthy[:-1]
        features.append(np.median(np.abs(np.diff(image, axis=0))[pairs]) / median)
    return features + [float(brain.sum())] + list(np.argwhere(brain).mean(axis=0))


def _label_statistics(seg: np.ndarray) -> dict[str, float]:
    whole = float((seg > 0).sum())
    return {
        "tumour volume": whole,
        "core volume": float(np.isin(seg, [1, 4]).sum()),
        "enhancing fraction": (seg == 4).sum() / whole,
        "necrotic fraction": (seg == 1).sum() / whole,
        "oedema fraction": (seg == 2).sum() / whole,
    }


def _tumour_features(images: np.ndarray, seg: np.ndarray) -> list[float]:
    """Intensity quantiles and spread inside the whole tumour, per sequence, over the healthy brain's median."""
    healthy = (images[0] > 0) & (seg == 0)
    features = []
    for image in images:
        values = image[seg > 0] / np.median(image[healthy])
        features += list(np.percentile(values, [10, 50, 90, 99])) + [values.std()]
    return features


def _study(version: int, seed: int = 0) -> dict:
    """``STUDY_CASES`` cases at ``STUDY_SPACING`` mm, half LGG, drawn as the cohort draws them (in memory)."""
    design = cohort_design(STUDY_CASES, seed, 0.5, synthetic.default_ambiguous_fraction(version))
    hgg, healthy, labels, tumour = [], [], [], []
    for i, (is_lgg, ambiguous) in enumerate(design):
        images, seg, _ = generate_case(
            i, seed=seed, is_lgg=is_lgg, ambiguous=ambiguous, spacing=STUDY_SPACING, version=version
        )
        hgg.append(int(not is_lgg))
        healthy.append(_healthy_features(images, seg))
        labels.append(_label_statistics(seg))
        tumour.append(_tumour_features(images, seg))
    return {"hgg": np.array(hgg), "healthy": np.array(healthy), "labels": labels, "tumour": np.array(tumour)}


@pytest.fixture(scope="module")
def study_v3() -> dict:
    return _study(3)


def _cv_auc(features: np.ndarray, y: np.ndarray) -> float:
    """Cross-validated AUC of a logistic regression (standardised features; 5-fold, repeated 3 times)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=5000))
    aucs = []
    for repeat in range(3):
        cv = StratifiedKFold(n_splits=5, shuffle=True, random_state=repeat)
        scores = cross_val_predict(model, features, y, cv=cv, method="predict_proba")[:, 1]
        aucs.append(roc_auc_score(y, scores))
    return float(np.mean(aucs))


def _separation(values, y) -> float:
    """AUC of a single statistic, in the direction that separates best (0.5: none, 1: perfect)."""
    auc = roc_auc_score(y, values)
    return max(auc, 1 - auc)


def test_v3_healthy_brain_gives_no_shortcut_to_the_grade(study_v3):
    """Healthy-tissue intensities, brain size, position and noise carry no grade: CV AUC <= 0.6."""
    assert _cv_auc(study_v3["healthy"], study_v3["hgg"]) <= 0.6


def test_v3_no_single_label_statistic_gives_the_grade_away_but_the_images_do(study_v3):
    y = study_v3["hgg"]
    separations = {k: _separation([s[k] for s in study_v3["labels"]], y) for k in study_v3["labels"][0]}
    assert max(separations.values()) <= 0.95, separations
    assert separations["enhancing fraction"] > 0.75  # most HGG enhance and most LGG do not: a cue, not a rule
    assert _cv_auc(study_v3["tumour"], y) > 0.85  # the tumour's appearance still carries the grade


def test_version_2_has_the_single_cue_that_version_3_removes():
    design = cohort_design(40, 0, 0.5, 0.15)
    fractions = []
    for i, (is_lgg, ambiguous) in enumerate(design):
        _, seg, _ = generate_case(i, is_lgg=is_lgg, ambiguous=ambiguous, spacing=STUDY_SPACING, version=2)
        fractions.append(_label_statistics(seg)["enhancing fraction"])
    assert _separation(fractions, [not lgg for lgg, _ in design]) > 0.95


@pytest.mark.parametrize(
    "index, is_lgg, ambiguous", [(0, False, False), (1, True, False), (2, False, True), (3, True, True)]
)
def test_v3_tumour_is_irregular_inside_the_brain_with_brats_labels(index, is_lgg, ambiguous):
    images, seg, case = generate_case(index, seed=1, is_lgg=is_lgg, ambiguous=ambiguous, spacing=3.0)
    brain = images[0] > 0
    assert set(np.unique(seg)) <= {0, 1, 2, 4} and brain[seg > 0].all()
    assert {1, 2} <= set(np.unique(seg))
    assert (
        case.phenotype
        == {(0, 0): "ring", (0, 1): "non-enhancing", (1, 0): "non-enhancing", (1, 1): "faint"}[
            (int(is_lgg), int(ambiguous))
        ]
    )
    assert ((seg == 4).any()) == (case.phenotype != "non-enhancing")
    whole = seg > 0
    surface = np.argwhere(whole & ~ndimage.binary_erosion(whole)) * 3.0
    distance = np.linalg.norm(surface - surface.mean(axis=0), axis=1)
    assert distance.std() / distance.mean() > 0.12  # not a ball (a ball of this size: about 0.05)
    for k, label in ((1, "volume_ncr_ml"), (2, "volume_ed_ml"), (4, "volume_et_ml")):
        assert getattr(case, label) == pytest.approx((seg == k).sum() * 0.027, abs=0.01)


def test_v3_tumour_compartments_have_their_radiological_contrast():
    """HGG: an enhancing rim around a T1-dark, T2-bright core in T2/FLAIR-bright oedema; LGG: a homogeneous,
    non-enhancing, T2-bright mass, FLAIR-suppressed when it shows the mismatch sign (the designed contrasts:
    without the healthy tissues' per-case jitter)."""

    def means(images, seg, labels):
        healthy = np.median(images[:, (seg == 0) & (images[0] > 0)], axis=1)
        return images[:, np.isin(seg, labels)].mean(axis=1) / healthy

    hgg, seg, _ = generate_case(0, seed=1, is_lgg=False, ambiguous=False, spacing=3.0, contrast_jitter=0.0)
    rim, core, oedema = means(hgg, seg, [4]), means(hgg, seg, [1]), means(hgg, seg, [2])
    assert rim[T1CE] > 1.5 * core[T1CE] and rim[T1CE] / rim[T1] > 1.6
    assert core[T2] > 1.5 and core[T1] < 0.7
    assert oedema[T2] > 1.2 and oedema[FLAIR] > 1.2
    mismatch = {}
    for index in range(12):
        lgg, seg, case = generate_case(index, seed=2, is_lgg=True, ambiguous=False, spacing=4.0, contrast_jitter=0.0)
        mass, rim = means(lgg, seg, [1]), means(lgg, seg, [2])
        assert not (seg == 4).any() and mass[T2] > 1.4 and mass[T1CE] / mass[T1] < 1.35
        mismatch[case.mismatch] = mass[FLAIR] / rim[FLAIR]
    assert mismatch[True] < 0.8 < mismatch[False]  # both kinds among 12 LGG (p = 0.35 each)


def test_v3_tumour_grows_mostly_in_white_matter():
    atlas = load_atlas()
    white_in_oedema, white_in_brain = [], []
    for index in range(4):
        images, seg, case = generate_case(index, seed=3, is_lgg=index % 2 == 0, ambiguous=False, spacing=3.0)
        index_to_atlas = np.asarray(case.atlas_affine)
        voxels = np.argwhere(images[0] > 0)
        tau = ndimage.map_coordinates(atlas.tau, (index_to_atlas[:3, :3] @ voxels.T) + index_to_atlas[:3, 3:], order=1)
        white = tau > 1.5
        white_in_oedema.append(white[seg[tuple(voxels.T)] == 2].mean())
        white_in_brain.append(white.mean())
    assert np.mean(white_in_oedema) > np.mean(white_in_brain) + 0.2


def test_v3_case_is_the_atlas_anatomy_moved_by_its_recorded_affine():
    """After undoing its recorded affine, a case's T1 correlates with the atlas's (up to the smooth deformation,
    the push, bias and noise); another case's affine fits worse: no two brains are the same."""
    atlas = load_atlas()
    cases = [generate_case(i, seed=4, is_lgg=False, ambiguous=False, spacing=3.0) for i in range(3)]

    def correlation(images, seg, matrix):
        healthy = (images[T1] > 0) & ~ndimage.binary_dilation(seg > 0, iterations=2)
        voxels = np.argwhere(healthy)
        expected = ndimage.map_coordinates(atlas.t1, (matrix[:3, :3] @ voxels.T) + matrix[:3, 3:], order=1)
        return np.corrcoef(images[T1][healthy], expected)[0, 1]

    for i, (images, seg, case) in enumerate(cases):
        own = correlation(images, seg, np.asarray(case.atlas_affine))
        others = [correlation(images, seg, np.asarray(c.atlas_affine)) for j, (_, _, c) in enumerate(cases) if j != i]
        assert own > 0.75 and own > max(others) + 0.05, (own, others)
    masks = [images[T1] > 0 for images, _, _ in cases]
    overlap = 2 * (masks[0] & masks[1]).sum() / (masks[0].sum() + masks[1].sum())
    assert overlap < 0.97 and cases[0][2].scale != cases[1][2].scale


def test_mass_effect_push_is_a_fold_free_radial_map():
    """The source radius ``r (1 - A exp(-r^2 / L^2))`` increases with ``r`` for every amplitude drawn (<= 0.45)."""
    r = np.linspace(0, 100, 2001)
    for amplitude in (0.15, 0.3, 0.45):
        push = Push(np.zeros(3), amplitude, 20.0)
        source = r * (1 - push.amplitude * np.exp(-(r**2) / push.length_mm**2))
        assert (np.diff(source) > 0).all()


def test_v3_contrast_jitter_changes_only_healthy_tissue():
    kwargs = dict(seed=2, is_lgg=True, ambiguous=False, spacing=4.0)
    plain, seg, case = generate_case(0, contrast_jitter=0.0, **kwargs)
    jittered, seg_j, case_j = generate_case(0, contrast_jitter=0.2, **kwargs)
    np.testing.assert_array_equal(seg, seg_j)
    assert case == case_j
    core = ndimage.binary_erosion(seg == 1, iterations=1)
    assert core.sum() > 20
    same = (jittered[:, core] == plain[:, core]).all(axis=0)
    assert same.mean() > 0.9  # the tumour core owes nothing to healthy tissue (but on its soft border)
    healthy = (seg == 0) & (plain[0] > 0)
    ratio = np.median(jittered[:, healthy] / plain[:, healthy], axis=1)
    assert np.abs(ratio - 1).max() > 0.02


def test_v3_case_takes_well_under_a_few_seconds_at_2mm():
    load_atlas()  # read once per process
    start = time.perf_counter()
    images, seg, _ = generate_case(0, seed=0, is_lgg=False, ambiguous=False, spacing=2.0)
    assert time.perf_counter() - start < 4.0  # about 0.2 s on an idle core; generous for loaded test machines
    assert images.shape == (4, 120, 120, 78) and seg.shape == (120, 120, 78)


def test_generate_cohort_rejects_bad_arguments_and_stale_folders(tmp_path):
    with pytest.raises(ValueError, match="n_cases"):
        generate_cohort(tmp_path, n_cases=0)
    with pytest.raises(ValueError, match="lgg_fraction"):
        generate_cohort(tmp_path, n_cases=2, lgg_fraction=1.5)
    with pytest.raises(ValueError, match="contrast_jitter"):
        generate_cohort(tmp_path, n_cases=2, contrast_jitter=-0.1)
    with pytest.raises(ValueError, match="version"):
        generate_cohort(tmp_path, n_cases=2, version=1)
    generate_cohort(tmp_path, n_cases=2, spacing=12.0, progress=False)
    with pytest.raises(ValueError, match="BraTS20_Training_002"):
        generate_cohort(tmp_path, n_cases=1, spacing=12.0, progress=False)


@pytest.mark.parametrize("version", [None, 2])
def test_cli_writes_the_requested_cohort(tmp_path, version):
    argv = [
        "--out",
        str(tmp_path / "cli"),
        "--cases",
        "2",
        "--seed",
        "1",
        "--spacing",
        "12",
        "--contrast-jitter",
        "0.2",
    ] + ([] if version is None else ["--version", str(version)])
    info = json.loads((synthetic.main(argv) / "synthetic_cohort.json").read_text())
    assert info["n_cases"] == 2 and info["seed"] == 1 and info["shape"] == [20, 20, math.ceil(155 / 12)]
    assert info["contrast_jitter"] == 0.2
    assert info["generator"] == "monai_protoshare.data.synthetic"
    assert info["version"] == (version or synthetic.GENERATOR_VERSION) and synthetic.GENERATOR_VERSION == 3
