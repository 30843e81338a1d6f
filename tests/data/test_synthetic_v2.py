"""Version 2 of the synthetic cohort (kept selectable): its grade cues, distractors and contrast jitter."""

from __future__ import annotations

import numpy as np
import pytest

from monai_protoshare.data import synthetic_v2
from monai_protoshare.data.synthetic import generate_case


def _region_means(images, seg, labels):
    """Mean of each sequence over ``labels``, relative to its median over healthy brain (removes scanner gains)."""
    healthy = np.median(images[:, (seg == 0) & (images[0] > 0)], axis=1)
    return images[:, np.isin(seg, labels)].mean(axis=1) / healthy


@pytest.mark.parametrize("ambiguous", [False, True])
def test_hgg_has_an_enhancing_rim_around_a_dark_core_and_lgg_does_not(ambiguous):
    hgg, hgg_seg, _ = generate_case(1, seed=0, is_lgg=False, ambiguous=ambiguous, spacing=4.0, version=2)
    lgg, lgg_seg, _ = generate_case(2, seed=0, is_lgg=True, ambiguous=ambiguous, spacing=4.0, version=2)
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
        lgg, seg, _ = generate_case(index, seed=0, is_lgg=True, ambiguous=False, spacing=3.0, version=2)
        mass, rim = _region_means(lgg, seg, [1]), _region_means(lgg, seg, [2])
        assert mass[t2] > 1.15 * rim[t2] and mass[flair] < 0.7 * rim[flair]
        assert mass[t2] / mass[flair] > 1.5 and rim[t2] / rim[flair] < 1.1
    hgg, seg, _ = generate_case(1, seed=0, is_lgg=False, ambiguous=False, spacing=3.0, version=2)
    oedema = _region_means(hgg, seg, [2])
    assert oedema[t2] / oedema[flair] < 1.1


def test_every_case_has_enhancing_distractors_outside_the_tumour():
    for index, is_lgg in ((0, True), (1, False), (2, True)):
        images, seg, case = generate_case(index, seed=5, is_lgg=is_lgg, ambiguous=False, spacing=3.0, version=2)
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
        kwargs = dict(seed=2, is_lgg=is_lgg, ambiguous=False, spacing=4.0, version=2)
        plain, seg, case = generate_case(index, **kwargs)  # the default: no jitter
        jittered, seg_j, case_j = generate_case(index, contrast_jitter=jitter, **kwargs)
        np.testing.assert_array_equal(seg, seg_j)
        assert case == case_j
        np.testing.assert_array_equal(jittered[:, seg > 0], plain[:, seg > 0])
        rng = np.random.default_rng([2, index])  # replays the case's first draws: its grid, then its brain
        tissue = synthetic_v2._brain(synthetic_v2._Grid(seg.shape, 4.0, rng), rng)[0]
        wm = (tissue == synthetic_v2._WM) & (seg == 0)
        wm_factors.append(np.median(jittered[:, wm] / plain[:, wm], axis=1))
    wm_factors = np.array(wm_factors)  # (case, sequence), as measured on the images
    drawn = [np.random.default_rng([2, i, 2]).normal(1.0, jitter, (5, 4))[0] for i in range(6)]  # WM row
    np.testing.assert_allclose(wm_factors, drawn, atol=0.01)  # up to the Rician noise
    assert 0.5 * jitter < wm_factors.std() < 2 * jitter
