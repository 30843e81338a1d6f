"""A synthetic BraTS-2020-like cohort: same layout, names, dtypes, labels and affine as the real release.

:func:`generate_cohort` writes ``<out>/BraTS20_Training_NNN/BraTS20_Training_NNN_{t1,t1ce,t2,flair,seg}.nii.gz``,
``<out>/name_mapping.csv`` and ``synthetic_cohort.json`` (generator version, parameters, each case's ground
truth). Two image versions are selectable (``version``, ``--version``): **3** (the default), the SRI24 atlas
warped per case with irregular tumours and no single grade cue (:mod:`~monai_protoshare.data.synthetic_v3`,
:mod:`~monai_protoshare.data.synthetic_anatomy`, :mod:`~monai_protoshare.data.synthetic_tumour`), and **2**,
geometric heads with one clear cue a grade (:mod:`~monai_protoshare.data.synthetic_v2`), kept byte for byte.
Case ``i`` draws from its own generator seeded by ``(seed, i)``, so it is identical whatever the number of
cases; same arguments, same bytes.

The layout, the affine, the determinism, the design of each version, its measured separability (AUCs) and the
version history are in ``docs/synthetic_cohort.md``.

Example:
    >>> from monai_protoshare.data.synthetic import generate_cohort
    >>> root = generate_cohort("cohort", n_cases=4, seed=0, spacing=6.0)
    >>> sorted(p.name for p in root.iterdir())[:2]
    ['BraTS20_Training_001', 'BraTS20_Training_002']

CLI: ``python -m monai_protoshare.data.synthetic --out DIR --cases N --seed S [--spacing MM]
[--lgg-fraction F] [--ambiguous-fraction F] [--contrast-jitter S] [--shape X Y Z] [--version {2,3}]``.
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from tqdm import tqdm

from monai_protoshare.data.brats import NAME_MAPPING, NAME_MAPPING_COLUMNS
from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.data.synthetic_common import BRATS_FOV_MM, brats_like_affine, default_shape, subject_id
from monai_protoshare.data.synthetic_v2 import SyntheticCase, generate_case_v2
from monai_protoshare.data.synthetic_v3 import DEFAULT_CONTRAST_JITTER_V3, SyntheticCaseV3, generate_case_v3
from monai_protoshare.io import atomic_path, write_json, write_text

__all__ = [
    "BRATS_FOV_MM",
    "DEFAULT_CONTRAST_JITTER",
    "GENERATOR_VERSION",
    "GENERATOR_VERSIONS",
    "NAME_MAPPING_COLUMNS",
    "SEQUENCES",
    "SyntheticCase",
    "SyntheticCaseV3",
    "brats_like_affine",
    "cohort_design",
    "default_ambiguous_fraction",
    "default_contrast_jitter",
    "default_shape",
    "generate_case",
    "generate_cohort",
    "subject_id",
]

logger = logging.getLogger(__name__)

#: LGG fraction of the release (76 LGG among 369 cases).
BRATS_LGG_FRACTION = 76 / 369
#: Version of the generated images, recorded in ``synthetic_cohort.json`` and the default of
#: :func:`generate_cohort` and the CLI; raised whenever the same arguments write different images, so a cohort
#: kept on disk from an earlier version can be recognised and regenerated (2: geometric heads, the LGG mass with
#: the T2-FLAIR mismatch sign; 3: SRI24 anatomy, no shortcut).
GENERATOR_VERSION = 3
#: Versions :func:`generate_cohort` can write.
GENERATOR_VERSIONS = (2, 3)
#: Default per-case spread of the healthy tissues' contrast of version 2 (version 3: 0.10).
DEFAULT_CONTRAST_JITTER = 0.0
_DEFAULT_CONTRAST_JITTER = {2: DEFAULT_CONTRAST_JITTER, 3: DEFAULT_CONTRAST_JITTER_V3}
# Default probability of the atypical variant of a grade: version 3 has more (BraTS: some LGG enhance, some HGG
# do not), so that neither the enhancing nor the necrotic fraction alone gives the grade away.
_DEFAULT_AMBIGUOUS_FRACTION = {2: 0.15, 3: 0.20}


def default_contrast_jitter(version: int = GENERATOR_VERSION) -> float:
    """Default healthy-tissue contrast spread of ``version`` (2: 0, 3: 0.10)."""
    return _DEFAULT_CONTRAST_JITTER[_check_version(version)]


def default_ambiguous_fraction(version: int = GENERATOR_VERSION) -> float:
    """Default probability of a grade's atypical variant in ``version`` (2: 0.15, 3: 0.20)."""
    return _DEFAULT_AMBIGUOUS_FRACTION[_check_version(version)]


def _check_version(version: int) -> int:
    if version not in GENERATOR_VERSIONS:
        raise ValueError(f"version must be one of {GENERATOR_VERSIONS}, got {version!r}.")
    return int(version)


def _grade_is_lgg(index: int, lgg_fraction: float, phase: float) -> bool:
    """Beatty sequence: case ``index`` is LGG when ``floor((i + 1) f + phase)`` steps up."""
    return math.floor((index + 1) * lgg_fraction + phase) > math.floor(index * lgg_fraction + phase)


def cohort_design(
    n_cases: int, seed: int = 0, lgg_fraction: float = BRATS_LGG_FRACTION, ambiguous_fraction: float = 0.2
) -> list[tuple[bool, bool]]:
    """``(is_lgg, ambiguous)`` of each case of a cohort, as :func:`generate_cohort` draws them.

    The grades follow a Beatty sequence with a phase drawn from ``seed``; case ``i`` is ambiguous when a draw
    from the generator seeded by ``(seed, i, 1)`` falls below ``ambiguous_fraction``.
    """
    phase = float(np.random.default_rng([seed]).uniform())
    return [
        (_grade_is_lgg(i, lgg_fraction, phase), bool(np.random.default_rng([seed, i, 1]).random() < ambiguous_fraction))
        for i in range(n_cases)
    ]


def generate_case(
    index: int,
    *,
    seed: int = 0,
    is_lgg: bool,
    ambiguous: bool,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    contrast_jitter: float | None = None,
    version: int = GENERATOR_VERSION,
) -> tuple[np.ndarray, np.ndarray, SyntheticCase | SyntheticCaseV3]:
    """Generate one case in memory.

    Args:
        index: 0-based case index; with ``seed`` it seeds the case's own generator.
        seed: cohort seed.
        is_lgg: grade (LGG when true, HGG otherwise).
        ambiguous: draw the atypical variant of the grade (version 2: a weaker cue; version 3: HGG without
            clear enhancement, LGG with faint enhancing foci).
        spacing: isotropic voxel size in mm.
        shape: grid shape; defaults to the release's field of view at ``spacing`` (:func:`default_shape`).
        contrast_jitter: standard deviation of the per-case, per-sequence factor on the healthy tissues'
            contrast, drawn from its own generator seeded by ``(seed, index, 2)`` so that everything else in
            the case is the same for every value (0 switches it off); ``None``: the version's default
            (:func:`default_contrast_jitter`).
        version: generator version (2 or 3).

    Returns:
        ``(images, seg, case)``: float32 images (4, H, W, D) in the order T1, T1-CE, T2, FLAIR, zero outside
        the brain; uint8 segmentation (H, W, D) with labels {0, 1, 2, 4}; the case's ground truth.
    """
    version = _check_version(version)
    jitter = default_contrast_jitter(version) if contrast_jitter is None else contrast_jitter
    generate = generate_case_v2 if version == 2 else generate_case_v3
    return generate(
        index, seed=seed, is_lgg=is_lgg, ambiguous=ambiguous, spacing=spacing, shape=shape, contrast_jitter=jitter
    )


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    image = nib.Nifti1Image(array, affine)
    image.header.set_xyzt_units("mm", "sec")
    image.header.set_qform(affine, code=1)
    image.header.set_sform(affine, code=1)
    with atomic_path(path) as tmp:
        nib.save(image, tmp)


def generate_cohort(
    out_dir: str | Path,
    n_cases: int = 20,
    seed: int = 0,
    lgg_fraction: float = BRATS_LGG_FRACTION,
    spacing: float = 2.0,
    shape: Sequence[int] | None = None,
    ambiguous_fraction: float | None = None,
    contrast_jitter: float | None = None,
    progress: bool = True,
    version: int = GENERATOR_VERSION,
) -> Path:
    """Write a synthetic cohort in the BraTS-2020 layout (see the module docstring) and return ``out_dir``.

    Args:
        out_dir: output folder (created). Existing case folders of a larger earlier cohort are an error.
        n_cases: number of cases.
        seed: cohort seed; case ``i`` is the same for every ``n_cases``.
        lgg_fraction: fraction of LGG cases (default the release's 76/369).
        spacing: isotropic voxel size in mm (default 2 mm; the release is 1 mm).
        shape: grid shape; defaults to the release's 240 x 240 x 155 mm field of view at ``spacing``.
        ambiguous_fraction: probability that a case carries the atypical variant of its grade (version 2: a
            weaker cue; version 3: HGG without clear enhancement, LGG with faint enhancing foci); ``None``: the
            version's default (:func:`default_ambiguous_fraction`: 0.15 for 2, 0.20 for 3).
        contrast_jitter: per-case spread of the healthy tissues' contrast (:func:`generate_case`); ``None``:
            the version's default (:func:`default_contrast_jitter`).
        progress: show a tqdm progress bar.
        version: generator version (:data:`GENERATOR_VERSIONS`; default :data:`GENERATOR_VERSION`).

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: for a non-positive ``n_cases`` or ``spacing``, fractions outside [0, 1], a shape that
            is not three positive integers, an unknown version, or stale case folders in ``out_dir``.
    """
    version = _check_version(version)
    if contrast_jitter is None:
        contrast_jitter = default_contrast_jitter(version)
    if ambiguous_fraction is None:
        ambiguous_fraction = default_ambiguous_fraction(version)
    shape = _check_cohort_arguments(n_cases, spacing, shape, lgg_fraction, ambiguous_fraction, contrast_jitter)
    out = Path(out_dir)
    ids = _case_folders(out, n_cases)
    design = cohort_design(n_cases, seed, lgg_fraction, ambiguous_fraction)
    affine = brats_like_affine(spacing, shape)
    cases, start = [], time.perf_counter()
    for i in tqdm(range(n_cases), desc="synthetic cohort", unit="case", disable=not progress):
        is_lgg, ambiguous = design[i]
        images, seg, case = generate_case(
            i,
            seed=seed,
            is_lgg=is_lgg,
            ambiguous=ambiguous,
            spacing=spacing,
            shape=shape,
            contrast_jitter=contrast_jitter,
            version=version,
        )
        case = dataclasses.replace(case, subject_id=ids[i])
        folder = out / ids[i]
        for c, sequence in enumerate(SEQUENCES):
            _save_nifti(images[c], affine, folder / f"{ids[i]}_{sequence}.nii.gz")
        _save_nifti(seg, affine, folder / f"{ids[i]}_seg.nii.gz")
        cases.append(case)
    params = {"n_cases": n_cases, "seed": seed, "lgg_fraction": lgg_fraction, "spacing": spacing}
    params |= {"shape": list(shape), "ambiguous_fraction": ambiguous_fraction, "contrast_jitter": contrast_jitter}
    _write_tables(out, cases, {"version": version, **params})
    n_lgg = sum(c.grade == "LGG" for c in cases)
    logger.info(
        "Wrote %d synthetic cases (%d LGG, %d HGG) to %s in %.1f s.",
        n_cases,
        n_lgg,
        n_cases - n_lgg,
        out,
        time.perf_counter() - start,
    )
    return out


def _check_cohort_arguments(
    n_cases: int,
    spacing: float,
    shape: Sequence[int] | None,
    lgg_fraction: float,
    ambiguous_fraction: float,
    contrast_jitter: float,
) -> tuple[int, int, int]:
    """:func:`generate_cohort`'s argument checks (``ValueError`` naming the argument); returns the grid shape."""
    if n_cases < 1:
        raise ValueError(f"n_cases must be >= 1, got {n_cases}.")
    if spacing <= 0:
        raise ValueError(f"spacing must be > 0 mm, got {spacing}.")
    for name, value in (("lgg_fraction", lgg_fraction), ("ambiguous_fraction", ambiguous_fraction)):
        if not 0 <= value <= 1:
            raise ValueError(f"{name} must be in [0, 1], got {value}.")
    if not 0 <= contrast_jitter <= 0.5:
        raise ValueError(f"contrast_jitter must be in [0, 0.5], got {contrast_jitter}.")
    shape = default_shape(spacing) if shape is None else tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be three integers >= 8, got {shape}.")
    return shape


def _case_folders(out: Path, n_cases: int) -> list[str]:
    """Create ``out`` and return the cases' subject ids; case folders beyond ``n_cases`` already there are an
    error (a cohort must not mix with the rest of a larger earlier one)."""
    out.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n_cases)))
    ids = [subject_id(i, width) for i in range(n_cases)]
    stale = sorted(p.name for p in out.glob("BraTS20_Training_*") if p.is_dir() and p.name not in set(ids))
    if stale:
        raise ValueError(
            f"out_dir {out} already holds case folders outside the {n_cases} requested ({', '.join(stale[:5])}"
            f"{', ...' if len(stale) > 5 else ''}); use an empty folder or a larger n_cases."
        )
    return ids


def _write_tables(out: Path, cases: list[SyntheticCase | SyntheticCaseV3], params: dict) -> None:
    """``name_mapping.csv`` (the release's six columns, ``NA`` for the unknown ids) and ``synthetic_cohort.json``
    (the generator, ``params`` and every case's ground truth)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(NAME_MAPPING_COLUMNS)
    writer.writerows([c.grade, "NA", "NA", "NA", "NA", c.subject_id] for c in cases)
    write_text(out / NAME_MAPPING, buffer.getvalue())
    header = {"generator": __spec__.name, **params}  # __spec__: right under -m too
    write_json(out / "synthetic_cohort.json", {**header, "cases": [dataclasses.asdict(c) for c in cases]})


def main(argv: Sequence[str] | None = None) -> Path:
    """Command-line entry point (see the module docstring)."""
    parser = argparse.ArgumentParser(description="Write a synthetic BraTS-2020-like cohort.")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--cases", type=int, default=20, help="number of cases (default 20)")
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--spacing", type=float, default=2.0, help="voxel size in mm (default 2)")
    parser.add_argument("--lgg-fraction", type=float, default=BRATS_LGG_FRACTION, help="default 76/369")
    parser.add_argument(
        "--ambiguous-fraction", type=float, default=None, help="default: the version's (0.15 for 2, 0.20 for 3)"
    )
    parser.add_argument(
        "--contrast-jitter",
        type=float,
        default=None,
        help="healthy-tissue contrast spread (default: the version's, 0 for 2 and 0.10 for 3)",
    )
    parser.add_argument("--shape", type=int, nargs=3, default=None, help="grid shape (default: BraTS field of view)")
    parser.add_argument(
        "--version",
        type=int,
        choices=GENERATOR_VERSIONS,
        default=GENERATOR_VERSION,
        help=f"generator version (default {GENERATOR_VERSION})",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    return generate_cohort(
        args.out,
        n_cases=args.cases,
        seed=args.seed,
        lgg_fraction=args.lgg_fraction,
        spacing=args.spacing,
        shape=args.shape,
        ambiguous_fraction=args.ambiguous_fraction,
        contrast_jitter=args.contrast_jitter,
        version=args.version,
    )


if __name__ == "__main__":
    main()
