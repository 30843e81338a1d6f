"""One case: four raw sequences in, SRI24-registered BraTS-layout volumes and a transform record out.

Steps (the BraTS pipeline's order, CaPTk/FeTS ``BraTSPipeline``):

1. read the four sequences (a DICOM study converted by :mod:`data_prep.dicom_ingest`, or four NIfTI files);
2. optional skull stripping of the native T1 (:mod:`data_prep.skull_strip`; on by default for DICOM);
3. T1 (:data:`REFERENCE`, the atlas's contrast; skull-stripped when step 2 ran) -> SRI24 atlas, rigid,
   initialised on the brains' centres of mass; T1-CE, T2, FLAIR -> T1, rigid, initialised by the scanner
   coordinates (one session); optional N4 bias correction of the working images
   (:func:`data_prep.registration.register_sequences`);
4. compose the transforms and resample each sequence once onto the SRI24 grid at 1.5 mm or 1 mm
   (linear), apply the brain mask to all four;
5. quality checks (:mod:`data_prep.quality`): brain-mask Dice of the T1 with the atlas, foreground Dice and
   NMI agreement of every sequence with the T1; the case fails loudly when a registration clearly failed;
6. write ``<subject>_{t1,t1ce,t2,flair}.nii.gz`` (float32) and ``<subject>_data_prep.json`` into a hidden
   folder, then rename it to ``<out>/<subject>`` (:mod:`data_prep.brats_layout`).

The record (format :data:`RECORD_FORMAT`) keeps, per sequence, the source, the identification, the original
grid and the composed 4x4 transform, so :func:`data_prep.native_space.map_to_original` sends any output-space
volume back to the original scan.
"""

from __future__ import annotations

import datetime
import logging
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import SimpleITK as sitk
import torch
from monai.utils import look_up_option

from data_prep.atlas import ATLAS_SPACING, load_atlas, sri24_grid
from data_prep.brats_layout import RECORD_SUFFIX, check_subject_id, new_partial_dir, publish_case
from data_prep.geometry import LPS_TO_RAS, index_affine_lps, resample
from data_prep.quality import (
    MAX_NMI_GAIN,
    MIN_ATLAS_DICE,
    MIN_SEQUENCE_DICE,
    MIN_SEQUENCE_NMI,
    check_atlas_alignment,
    check_sequence_agreement,
    check_sequence_alignment,
)
from data_prep.registration import BACKENDS, register_sequences
from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.io import write_json

__all__ = ["RECORD_FORMAT", "REFERENCE", "PrepOptions", "prepare_dicom_study", "prepare_nifti_case"]

logger = logging.getLogger(__name__)

RECORD_FORMAT = "monai_protoshare.data_prep.case/1"
#: The sequence registered to the atlas (the atlas's contrast); the others are registered to it.
REFERENCE = "t1"
#: What the record's matrices mean.
CONVENTION = (
    "Physical coordinates are LPS millimetres (DICOM/ITK). 'output_to_original_lps' is a 4x4 matrix M mapping a "
    "point x of the output (SRI24) space to the point M @ x of that sequence's original scan (the ITK resampling "
    "convention); 'affine_lps' maps a voxel index (i, j, k, 1) to LPS; 'affine_ras' is the same grid as a "
    "nibabel/NIfTI affine (diag(-1, -1, 1, 1) @ affine_lps); 'shape' is (i, j, k) = nibabel's array shape."
)


@dataclass(frozen=True)
class PrepOptions:
    """Options of :func:`prepare_dicom_study` and :func:`prepare_nifti_case`.

    Attributes:
        spacing: output spacing in mm: 1.5 (the model's grid, 160 x 160 x 103) or 1.0 (BraTS, 240 x 240 x 155).
        backend: ``"simpleitk"`` (default), ``"greedy"`` (needs ``picsl-greedy``) or ``"ants"`` (needs ``antspyx``).
        bias_correction: N4-correct the working images before registration (the output is not corrected).
        skull_strip: run deepbet; ``None`` means on for DICOM input, off for NIfTI input.
        min_atlas_dice: quality threshold, see :mod:`data_prep.quality`.
        min_sequence_dice: quality threshold, see :mod:`data_prep.quality`.
        min_sequence_nmi: quality threshold (sequence agreement), see :mod:`data_prep.quality`.
        max_nmi_gain: quality threshold (sequence agreement), see :mod:`data_prep.quality`.
        registration_spacing: spacing of the atlas the T1 is registered to (1.5 mm shipped; coarser is
            faster, for tests).
        threads: threads for SimpleITK and torch; ``None`` keeps their defaults.
        overwrite: replace an existing case folder.
    """

    spacing: float = 1.5
    backend: str = "simpleitk"
    bias_correction: bool = False
    skull_strip: bool | None = None
    min_atlas_dice: float = MIN_ATLAS_DICE
    min_sequence_dice: float = MIN_SEQUENCE_DICE
    min_sequence_nmi: float = MIN_SEQUENCE_NMI
    max_nmi_gain: float = MAX_NMI_GAIN
    registration_spacing: float = ATLAS_SPACING
    threads: int | None = None
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.spacing not in (1.0, 1.5):
            raise ValueError(f"spacing must be 1.5 (model grid) or 1.0 (BraTS grid) mm; received {self.spacing!r}")
        look_up_option(self.backend, BACKENDS)


@dataclass
class _Source:
    """One input sequence: the NIfTI read, and a JSON-ready description of where it came from."""

    path: Path
    provenance: dict[str, Any] = field(default_factory=dict)


def prepare_dicom_study(
    study_dir: str | Path,
    out_root: str | Path,
    subject_id: str,
    options: PrepOptions = PrepOptions(),
    overrides: Mapping[str, object] | None = None,
) -> Path:
    """Prepare one DICOM study (identify, convert, register, write the BraTS layout).

    Args:
        study_dir: folder with the study's DICOM files (any layout).
        out_root: output root; the case goes to ``out_root/subject_id``.
        subject_id: case id (letters, digits, ``._-``).
        options: :class:`PrepOptions`; skull stripping defaults to on.
        overrides: sequence -> SeriesInstanceUID, SeriesNumber or SeriesDescription.

    Returns:
        The case folder.

    Raises:
        FileNotFoundError, ValueError, KeyError: bad study (message names the series or file), failed quality
            check (:class:`~data_prep.quality.RegistrationQualityError`), existing case without ``overwrite``.
    """
    from data_prep.dicom_ingest import load_dicom_study

    check_subject_id(subject_id)
    partial = new_partial_dir(out_root, subject_id, options.overwrite)
    try:
        native = partial / "native"
        converted = load_dicom_study(study_dir, native, overrides)
        sources = {}
        for sequence, item in converted.items():
            nifti = native / f"{subject_id}_{sequence}.nii.gz"
            os.replace(item.nifti, nifti)
            os.replace(item.sidecar, nifti.with_name(f"{subject_id}_{sequence}.json"))
            sources[sequence] = _Source(
                nifti,
                {
                    "kind": "dicom",
                    "study_dir": str(Path(study_dir).resolve()),
                    "native_nifti": nifti.relative_to(partial).as_posix(),
                    "files": sorted(str(p.resolve()) for p in item.identification.series.files),
                    "identification": item.identification.summary(),
                },
            )
        skull_strip = True if options.skull_strip is None else options.skull_strip
        _prepare(sources, partial, subject_id, options, skull_strip)
        return publish_case(partial, out_root, subject_id, options.overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def prepare_nifti_case(
    paths: Mapping[str, str | Path],
    out_root: str | Path,
    subject_id: str,
    options: PrepOptions = PrepOptions(),
) -> Path:
    """Prepare one case given as four NIfTI files.

    Args:
        paths: ``{"t1": ..., "t1ce": ..., "t2": ..., "flair": ...}``.
        out_root: output root; the case goes to ``out_root/subject_id``.
        subject_id: case id.
        options: :class:`PrepOptions`; skull stripping defaults to off (input assumed stripped).

    Returns:
        The case folder.

    Raises:
        KeyError: a sequence is missing from ``paths`` or an unknown one is given.
        FileNotFoundError: a file does not exist.
        ValueError: unreadable, non-3-D, non-finite or all-zero volume, failed quality check, existing case
            without ``overwrite``.
    """
    check_subject_id(subject_id)
    if set(paths) != set(SEQUENCES):
        raise KeyError(f"paths must have exactly the keys {SEQUENCES}; received {sorted(paths)}")
    sources = {}
    for sequence in SEQUENCES:
        path = Path(paths[sequence])
        if not path.is_file():
            raise FileNotFoundError(f"{subject_id}: {sequence} file {path} does not exist")
        sources[sequence] = _Source(path, {"kind": "nifti", "path": str(path.resolve())})
    partial = new_partial_dir(out_root, subject_id, options.overwrite)
    try:
        skull_strip = False if options.skull_strip is None else options.skull_strip
        _prepare(sources, partial, subject_id, options, skull_strip)
        return publish_case(partial, out_root, subject_id, options.overwrite)
    finally:
        shutil.rmtree(partial, ignore_errors=True)


def _read_volume(path: Path, sequence: str, subject: str) -> tuple[sitk.Image, dict[str, Any]]:
    """Read a NIfTI as a float32 3-D SimpleITK image and describe its grid (LPS and nibabel RAS)."""
    try:
        image = sitk.ReadImage(str(path), sitk.sitkFloat32)
    except RuntimeError as err:
        raise ValueError(f"{subject}: {sequence} file {path} is not a readable image ({err})") from err
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    if image.GetDimension() != 3:
        raise ValueError(f"{subject}: {sequence} file {path} must be a 3-D volume; received size {image.GetSize()}")
    # ITK reads a truncated .nii.gz without complaint and turns NaN into numbers: check the voxels with nibabel.
    try:
        nifti = nib.load(path)
        voxels = np.asanyarray(nifti.dataobj)
    except Exception as err:  # noqa: BLE001 - any failure means the file cannot be trusted
        raise ValueError(
            f"{subject}: {sequence} file {path} is truncated or corrupt ({type(err).__name__}: {err})"
        ) from err
    n_bad = int(np.count_nonzero(~np.isfinite(voxels))) if voxels.dtype.kind in "fc" else 0
    if n_bad:
        raise ValueError(f"{subject}: {sequence} file {path} has {n_bad} NaN/Inf voxel(s); expected finite intensities")
    if not voxels.any():
        raise ValueError(f"{subject}: {sequence} file {path} has only 0 voxels; expected an image of the head or brain")
    affine_lps = index_affine_lps(image)
    header_affine = nifti.affine
    if not np.allclose(header_affine, LPS_TO_RAS @ affine_lps, atol=1e-3):
        # Only when qform and sform disagree: SimpleITK's reading is the one the record stores.
        logger.warning("%s: %s qform/sform disagree; using SimpleITK's %s", subject, sequence, LPS_TO_RAS @ affine_lps)
    geometry = {
        "shape": list(image.GetSize()),
        "spacing": list(image.GetSpacing()),
        "affine_lps": affine_lps.tolist(),
        "affine_ras": (LPS_TO_RAS @ affine_lps).tolist(),
    }
    return image, geometry


def _field_of_view(image: sitk.Image, grid: sitk.Image, matrix: np.ndarray) -> np.ndarray:
    """Where ``image`` has data on ``grid`` (``matrix``: grid points to image points), boolean (D, H, W)."""
    ones = sitk.Image(image.GetSize(), sitk.sitkUInt8) + 1
    ones.CopyInformation(image)  # the image's own geometry, not the unit grid at the origin
    return sitk.GetArrayFromImage(resample(ones, grid, matrix, sitk.sitkNearestNeighbor)).astype(bool)


def _prepare(
    sources: Mapping[str, _Source], case_dir: Path, subject: str, options: PrepOptions, skull_strip: bool
) -> None:
    """Register, check and write one case into ``case_dir`` (the not yet published folder)."""
    timings: dict[str, float] = {}
    clock = time.perf_counter()
    if options.threads is not None:
        sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(options.threads)
    images, originals = {}, {}
    for sequence in SEQUENCES:
        images[sequence], originals[sequence] = _read_volume(sources[sequence].path, sequence, subject)
    timings["read"] = time.perf_counter() - clock

    native_brain = None
    if skull_strip:
        from data_prep.skull_strip import brain_mask

        if options.threads is not None:
            torch.set_num_threads(options.threads)
        clock = time.perf_counter()
        native_brain = brain_mask(images[REFERENCE])
        timings["skull_strip"] = time.perf_counter() - clock
    atlas = load_atlas(options.registration_spacing)
    matrices, steps = register_sequences(
        atlas.t1,
        images,
        REFERENCE,
        options.backend,
        threads=options.threads,
        bias_correction=options.bias_correction,
        reference_for_atlas=None if native_brain is None else sitk.Mask(images[REFERENCE], native_brain),
    )
    registrations = {}
    for sequence, step in steps.items():
        registrations[sequence] = {"fixed": "sri24", "metric": step.metric, "seconds": step.seconds}
        if sequence != REFERENCE:  # the step's own transform, reference points to sequence points
            registrations[sequence].update(fixed=REFERENCE, to_reference_lps=step.matrix.tolist())
    timings["registration"] = sum(step.seconds for step in steps.values())

    clock = time.perf_counter()
    grid = sri24_grid(options.spacing)
    # One resampling per sequence, through its composed transform (atlas -> reference -> sequence).
    volumes = {s: sitk.GetArrayFromImage(resample(images[s], grid, matrices[s])) for s in SEQUENCES}
    if native_brain is not None:
        brain = sitk.GetArrayFromImage(resample(native_brain, grid, matrices[REFERENCE], sitk.sitkNearestNeighbor)) > 0
    else:
        brain = volumes[REFERENCE] != 0
    atlas_brain = sitk.GetArrayFromImage(resample(sitk.Cast(atlas.mask, sitk.sitkFloat32), grid)) >= 0.5
    scores = {"atlas_dice": check_atlas_alignment(brain, atlas_brain, subject, options.min_atlas_dice, REFERENCE)}
    fields_of_view = {sequence: _field_of_view(images[sequence], grid, matrices[sequence]) for sequence in SEQUENCES}
    scores.update(check_sequence_alignment(volumes, fields_of_view, subject, options.min_sequence_dice, REFERENCE))
    scores.update(
        check_sequence_agreement(
            volumes, brain, subject, REFERENCE, options.spacing, options.min_sequence_nmi, options.max_nmi_gain
        )
    )
    logger.info("%s: registration quality %s", subject, {k: round(v, 3) for k, v in scores.items()})
    for sequence in SEQUENCES:
        volume = np.where(brain, volumes[sequence], 0.0).astype(np.float32) if skull_strip else volumes[sequence]
        image = sitk.GetImageFromArray(volume)
        image.CopyInformation(grid)
        sitk.WriteImage(image, str(case_dir / f"{subject}_{sequence}.nii.gz"), useCompression=True)
    timings["resample_and_write"] = time.perf_counter() - clock

    grid_affine = index_affine_lps(grid)
    record = {
        "format": RECORD_FORMAT,
        "subject_id": subject,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "convention": CONVENTION,
        "options": {**asdict(options), "skull_strip": skull_strip},
        "atlas": "SRI24 (Rohlfing et al. 2010), BraTS space, skull-stripped T1; CC BY-SA 3.0",
        "output": {
            "space": "SRI24",
            "shape": list(grid.GetSize()),
            "spacing": list(grid.GetSpacing()),
            "affine_lps": grid_affine.tolist(),
            "affine_ras": (LPS_TO_RAS @ grid_affine).tolist(),
            "files": {sequence: f"{subject}_{sequence}.nii.gz" for sequence in SEQUENCES},
            "skull_stripped": skull_strip,
        },
        "sequences": {
            sequence: {
                "source": sources[sequence].provenance,
                "original": originals[sequence],
                "output_to_original_lps": matrices[sequence].tolist(),
                "registration": registrations[sequence],
            }
            for sequence in SEQUENCES
        },
        "quality": scores,
        "timings_s": timings,
    }
    write_json(case_dir / f"{subject}{RECORD_SUFFIX}", record)
