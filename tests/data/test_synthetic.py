"""Synthetic cohort: BraTS layout, dtypes, labels, affine, determinism and the grade cues."""

from __future__ import annotations

import csv
import json
import math

import nibabel as nib
import numpy as np
import pytest

from monai_protoshare.data import synthetic
from monai_protoshare.data.synthetic import (
    NAME_MAPPING_COLUMNS,
    SEQUENCES,
    brats_like_affine,
    default_shape,
    generate_case,
    generate_cohort,
)

from .conftest import TINY_SPACING


def test_release_geometry_is_reproduced_at_1mm_and_scaled_at_2mm():
    assert default_shape(1.0) == (240, 240, 155)
    assert default_shape(2.0) == (120, 120, 78)
    release = np.array([[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    np.testing.assert_array_equal(brats_like_affine(1.0, (240, 240, 155)), release)
    affine = brats_like_affine(2.0, (120, 120, 78))
    assert nib.aff2axcodes(affine) == ("L", "P", "S")
    # Same field of view: the voxel centres span 238 mm along y, like the release's 239 mm at 1 mm.
    np.testing.assert_allclose(affine @ [0, 119, 0, 1], [0, 0, 0, 1])


def test_cohort_has_the_brats_layout_and_name_mapping(tiny_cohort):
    ids = [f"BraTS20_Training_{i:03d}" for i in range(1, 7)]
    assert sorted(p.name for p in tiny_cohort.iterdir() if p.is_dir()) == ids
    for sid in ids:
        names = sorted(p.name for p in (tiny_cohort / sid).iterdir())
        assert names == sorted(f"{sid}_{s}.nii.gz" for s in (*SEQUENCES, "seg"))
    with open(tiny_cohort / "name_mapping.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == NAME_MAPPING_COLUMNS
    assert [r[-1] for r in rows[1:]] == ids
    assert all(r[1:5] == ["NA"] * 4 and r[0] in ("HGG", "LGG") for r in rows[1:])
    assert sorted(r[0] for r in rows[1:]) == ["HGG"] * 3 + ["LGG"] * 3  # lgg_fraction 0.5 of 6
    info = json.loads((tiny_cohort / "synthetic_cohort.json").read_text())
    assert [c["grade"] for c in info["cases"]] == [r[0] for r in rows[1:]]


def test_files_have_brats_dtypes_labels_affine_and_zero_background(tiny_cohort):
    shape = default_shape(TINY_SPACING)
    for case in sorted(p for p in tiny_cohort.iterdir() if p.is_dir()):
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
        assert 0.1 < brains[0].mean() < 0.3  # a 1.1-1.6 L brain in the 8.9 L field of view


def test_same_arguments_give_the_same_bytes_and_case_i_ignores_n(tmp_path):
    a = generate_cohort(tmp_path / "a", n_cases=2, seed=3, spacing=10.0, progress=False)
    b = generate_cohort(tmp_path / "b", n_cases=3, seed=3, spacing=10.0, progress=False)
    c = generate_cohort(tmp_path / "c", n_cases=2, seed=4, spacing=10.0, progress=False)
    for sid in ("BraTS20_Training_001", "BraTS20_Training_002"):
        for suffix in (*SEQUENCES, "seg"):
            name = f"{sid}/{sid}_{suffix}.nii.gz"
            assert (a / name).read_bytes() == (b / name).read_bytes()
        assert (a / name).read_bytes() != (c / name).read_bytes()
    assert not list(tmp_path.rglob(".*tmp*"))  # atomic writes leave no temporary files


def test_lgg_count_follows_the_fraction_exactly_for_every_prefix():
    f = 76 / 369
    for seed in range(5):
        phase = float(np.random.default_rng([seed]).uniform())
        grades = [synthetic._grade_is_lgg(i, f, phase) for i in range(369)]
        assert sum(grades) == 76
        counts = np.cumsum(grades)
        assert all(abs(counts[n - 1] - n * f) < 1 for n in range(1, 370))


def _region_means(images, seg, labels):
    """Mean of each sequence over ``labels``, relative to its median over healthy brain (removes scanner gains)."""
    healthy = np.median(images[:, (seg == 0) & (images[0] > 0)], axis=1)
    return images[:, np.isin(seg, labels)].mean(axis=1) / healthy


@pytest.mark.parametrize("ambiguous", [False, True])
def test_hgg_has_an_enhancing_rim_around_a_dark_core_and_lgg_does_not(ambiguous):
    hgg, hgg_seg, _ = generate_case(1, seed=0, is_lgg=False, ambiguous=ambiguous, spacing=4.0)
    lgg, lgg_seg, _ = generate_case(2, seed=0, is_lgg=True, ambiguous=ambiguous, spacing=4.0)
    t1, t1ce, t2, flair = range(4)
    for images, seg in ((hgg, hgg_seg), (lgg, lgg_seg)):
        oedema, tumour = _region_means(images, seg, [2]), _region_means(images, seg, [1, 2, 4])
        assert oedema[flair] > 1.5 and oedema[t2] > 1.5 and tumour[t1] < 0.9  # T2/FLAIR bright, T1 dark
    rim, core = _region_means(hgg, hgg_seg, [4]), _region_means(hgg, hgg_seg, [1])
    assert rim[t1ce] > 1.2 * core[t1ce] and rim[t1ce] > 1.2 * rim[t1]  # enhancement around a dark core
    assert core[t2] > 1.5 and core[t1] < 0.7  # fluid core: bright T2, dark T1
    if ambiguous:  # the LGG cue is weaker: a small, faint enhancing spot
        spot = _region_means(lgg, lgg_seg, [4])
        assert 0 < (lgg_seg == 4).sum() < 0.1 * (lgg_seg > 0).sum()
        assert spot[t1ce] < rim[t1ce]
    else:
        assert not (lgg_seg == 4).any() and (lgg_seg == 1).sum() > (lgg_seg == 2).sum()
        assert (hgg_seg == 2).sum() > (hgg_seg == 4).sum()  # wide oedema
        assert rim[t1ce] > 1.4 * rim[t1]


def test_lgg_mass_shows_the_t2_flair_mismatch_sign_and_hgg_oedema_does_not():
    """LGG: the mass is T2-bright but FLAIR-suppressed inside a FLAIR-bright rim; HGG oedema is FLAIR-bright."""
    t2, flair = 2, 3
    for index in (2, 4):
        lgg, seg, _ = generate_case(index, seed=0, is_lgg=True, ambiguous=False, spacing=3.0)
        mass, rim = _region_means(lgg, seg, [1]), _region_means(lgg, seg, [2])
        assert mass[t2] > 1.15 * rim[t2] and mass[flair] < 0.7 * rim[flair]
        assert mass[t2] / mass[flair] > 1.5 and rim[t2] / rim[flair] < 1.1
    hgg, seg, _ = generate_case(1, seed=0, is_lgg=False, ambiguous=False, spacing=3.0)
    oedema = _region_means(hgg, seg, [2])
    assert oedema[t2] / oedema[flair] < 1.1


def test_every_case_has_enhancing_distractors_outside_the_tumour():
    for index, is_lgg in ((0, True), (1, False), (2, True)):
        images, seg, case = generate_case(index, seed=5, is_lgg=is_lgg, ambiguous=False, spacing=3.0)
        brain = images[0] > 0
        ratio = images[1] / np.maximum(images[0], 1e-6)  # T1-CE / T1: constant except where contrast enhances
        ratio /= np.median(ratio[brain])  # the two sequences have different scanner gains
        far = brain & (seg == 0)
        assert case.n_vessels >= 3 and (ratio[far] > 1.4).sum() >= 5, case


def test_contrast_jitter_scales_only_healthy_tissue_by_a_per_case_factor():
    """Healthy tissue gets a per-case, per-sequence factor N(1, jitter); the tumour and the rest of the case
    are untouched (at 4 mm the partial-volume filter is the identity, so voxel values compare exactly)."""
    jitter = 0.1
    wm_factors = []
    for index, is_lgg in enumerate((True, False, True, False, True, False)):
        kwargs = dict(seed=2, is_lgg=is_lgg, ambiguous=False, spacing=4.0)
        plain, seg, case = generate_case(index, **kwargs)  # the default: no jitter
        jittered, seg_j, case_j = generate_case(index, contrast_jitter=jitter, **kwargs)
        np.testing.assert_array_equal(seg, seg_j)
        assert case == case_j
        np.testing.assert_array_equal(jittered[:, seg > 0], plain[:, seg > 0])
        rng = np.random.default_rng([2, index])  # replays the case's first draws: its grid, then its brain
        tissue = synthetic._brain(synthetic._Grid(seg.shape, 4.0, rng), rng)[0]
        wm = (tissue == synthetic._WM) & (seg == 0)
        wm_factors.append(np.median(jittered[:, wm] / plain[:, wm], axis=1))
    wm_factors = np.array(wm_factors)  # (case, sequence), as measured on the images
    drawn = [np.random.default_rng([2, i, 2]).normal(1.0, jitter, (5, 4))[0] for i in range(6)]  # WM row
    np.testing.assert_allclose(wm_factors, drawn, atol=0.01)  # up to the Rician noise
    assert 0.5 * jitter < wm_factors.std() < 2 * jitter


def test_generate_cohort_rejects_bad_arguments_and_stale_folders(tmp_path):
    with pytest.raises(ValueError, match="n_cases"):
        generate_cohort(tmp_path, n_cases=0)
    with pytest.raises(ValueError, match="lgg_fraction"):
        generate_cohort(tmp_path, n_cases=2, lgg_fraction=1.5)
    with pytest.raises(ValueError, match="contrast_jitter"):
        generate_cohort(tmp_path, n_cases=2, contrast_jitter=-0.1)
    generate_cohort(tmp_path, n_cases=2, spacing=12.0, progress=False)
    with pytest.raises(ValueError, match="BraTS20_Training_002"):
        generate_cohort(tmp_path, n_cases=1, spacing=12.0, progress=False)


def test_cli_writes_the_requested_cohort(tmp_path):
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
    ]
    info = json.loads((synthetic.main(argv) / "synthetic_cohort.json").read_text())
    assert info["n_cases"] == 2 and info["seed"] == 1 and info["shape"] == [20, 20, math.ceil(155 / 12)]
    assert info["contrast_jitter"] == 0.2
    assert info["generator"] == "monai_protoshare.data.synthetic" and info["version"] == synthetic.GENERATOR_VERSION
