"""Write volumes as a synthetic multi-series MR DICOM study (one file per slice, realistic MR tags).

Used by the tests of :mod:`data_prep`, the MONAI Deploy app and the evidence export: a study that
``dcm2niix`` converts back to exactly the written geometry, with the tags that sequence identification
reads (SeriesDescription, EchoTime, RepetitionTime, InversionTime, ContrastBolusAgent, SeriesTime,
ImageType, MRAcquisitionType, ScanningSequence). Every SOP/Series/Study/Frame-of-reference UID is unique;
UIDs are derived from ``seed`` so a study is reproducible byte for byte.

:func:`write_synthetic_brain_study` builds the usual test study from the shipped SRI24 atlas: four
sequences with distinct contrasts, each on its own grid (e.g. a thick-slice oblique FLAIR) and moved
by its own small rigid motion, the whole head placed in scanner coordinates by a known rigid transform,
plus optional distractor series (localiser, DWI, derived ADC) that identification must drop.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian

from data_prep.atlas import load_atlas
from data_prep.geometry import index_affine_lps, make_grid, resample
from data_prep.known_motion import rigid_matrix

__all__ = [
    "CONTRASTS",
    "MR_IMAGE_STORAGE",
    "SeriesSpec",
    "SyntheticStudy",
    "write_dicom_study",
    "write_synthetic_brain_study",
]

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
_UID_PREFIX = "2.25."


@dataclass
class SeriesSpec:
    """One MR series to write.

    Attributes:
        image: 3-D SimpleITK image (LPS geometry); its third axis becomes the slice axis. Values are rounded
            to int16.
        description: SeriesDescription (and ProtocolName unless ``protocol_name`` is given).
        echo_time: EchoTime in ms, or ``None`` to omit the tag.
        repetition_time: RepetitionTime in ms, or ``None``.
        inversion_time: InversionTime in ms, or ``None``.
        contrast_agent: ContrastBolusAgent, or ``None`` to omit the tag.
        series_time: SeriesTime/AcquisitionTime as ``HHMMSS``.
        image_type: ImageType values.
        acquisition_type: MRAcquisitionType (``"2D"`` or ``"3D"``).
        scanning_sequence: ScanningSequence (e.g. ``"GR"``, ``"SE"``, ``"IR"``, ``["SE", "IR"]``).
        patient_id: overrides the study's PatientID (to build a wrong-patient series).
        extra: further tags by keyword (e.g. ``{"SequenceName": "*tir2d1"}``).
    """

    image: sitk.Image
    description: str
    echo_time: float | None = None
    repetition_time: float | None = None
    inversion_time: float | None = None
    contrast_agent: str | None = None
    series_time: str = "100000"
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "M", "ND")
    acquisition_type: str = "3D"
    scanning_sequence: str | Sequence[str] = "GR"
    protocol_name: str | None = None
    patient_id: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)


def _uid(seed: int | str, *parts: object) -> str:
    """Return a reproducible UID under the UUID-derived root ``2.25.``: 128 bits of a hash of the inputs."""
    digest = hashlib.sha256("|".join(map(str, (seed, *parts))).encode()).hexdigest()
    return _UID_PREFIX + str(int(digest[:32], 16))


def _save(ds: Dataset, path: Path) -> None:
    """Write a Part-10 file with pydicom 3 or 2 (the MONAI Label environment pins pydicom < 3)."""
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)


def write_dicom_study(
    series: Sequence[SeriesSpec],
    out_dir: str | Path,
    patient_id: str = "SYNTH0001",
    patient_name: str = "Synthetic^Brain",
    study_date: str = "20260101",
    seed: int | str = 0,
) -> dict[str, list[Path]]:
    """Write ``series`` as one study, each series into ``out_dir/<number>_<description>/IM<slice>.dcm``.

    Args:
        series: the series in acquisition order; SeriesNumber is the 1-based position.
        out_dir: destination folder (created).
        patient_id: PatientID of every series unless a :class:`SeriesSpec` overrides it.
        patient_name: PatientName.
        study_date: StudyDate/SeriesDate (``YYYYMMDD``).
        seed: makes the UIDs; the same seed and inputs give the same files.

    Returns:
        SeriesInstanceUID -> written files in slice order.

    Raises:
        ValueError: when a series image is not 3-D.

    Example:
        >>> import SimpleITK as sitk
        >>> files = write_dicom_study([SeriesSpec(sitk.Image([8, 8, 4], sitk.sitkInt16), "t1")], "study")
        >>> len(next(iter(files.values())))
        4
    """
    out_dir = Path(out_dir)
    study_uid = _uid(seed, "study", patient_id)
    written: dict[str, list[Path]] = {}
    for number, spec in enumerate(series, start=1):
        if spec.image.GetDimension() != 3:
            raise ValueError(
                f"series {number} {spec.description!r}: image must be 3-D; received {spec.image.GetDimension()}-D"
            )
        series_uid = _uid(seed, "series", number, spec.description)
        folder = out_dir / f"{number:03d}_{re.sub(r'[^A-Za-z0-9]+', '_', spec.description).strip('_')}"
        folder.mkdir(parents=True, exist_ok=True)
        header = _series_header(spec, number, series_uid, study_uid, patient_id, patient_name, study_date, seed)
        written[series_uid] = [
            _write_slice(header, spec, k, folder / f"IM{k + 1:04d}.dcm", seed) for k in range(spec.image.GetSize()[2])
        ]
    return written


def _series_header(
    spec: SeriesSpec,
    number: int,
    series_uid: str,
    study_uid: str,
    patient_id: str,
    patient_name: str,
    study_date: str,
    seed: int | str,
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.Modality = "MR"
    ds.Manufacturer = "monai_protoshare synthetic"
    ds.MagneticFieldStrength = 3.0
    ds.PatientName = patient_name
    ds.PatientID = spec.patient_id or patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = study_uid
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.StudyDate = ds.SeriesDate = ds.AcquisitionDate = ds.ContentDate = study_date
    ds.StudyTime = "090000"
    ds.SeriesTime = ds.AcquisitionTime = ds.ContentTime = spec.series_time
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = number
    ds.SeriesDescription = spec.description
    ds.ProtocolName = spec.protocol_name or spec.description
    ds.FrameOfReferenceUID = _uid(seed, "frame", study_uid)
    ds.ImageType = list(spec.image_type)
    ds.MRAcquisitionType = spec.acquisition_type
    ds.ScanningSequence = (
        spec.scanning_sequence if isinstance(spec.scanning_sequence, str) else list(spec.scanning_sequence)
    )
    ds.SequenceVariant = "NONE"
    for keyword, value in (
        ("EchoTime", spec.echo_time),
        ("RepetitionTime", spec.repetition_time),
        ("InversionTime", spec.inversion_time),
        ("ContrastBolusAgent", spec.contrast_agent),
    ):
        if value is not None:
            setattr(ds, keyword, value)
    direction = np.asarray(spec.image.GetDirection(), dtype=float).reshape(3, 3)
    spacing = spec.image.GetSpacing()
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in np.concatenate([direction[:, 0], direction[:, 1]])]
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]  # row spacing (j), column spacing (i)
    ds.SliceThickness = ds.SpacingBetweenSlices = f"{spacing[2]:.6f}"
    ds.Rows, ds.Columns = spec.image.GetSize()[1], spec.image.GetSize()[0]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "US"
    for keyword, value in spec.extra.items():
        setattr(ds, keyword, value)
    return ds


def _write_slice(header: Dataset, spec: SeriesSpec, k: int, path: Path, seed: int | str) -> Path:
    ds = Dataset()
    ds.update(header)
    ds.SOPInstanceUID = _uid(seed, "instance", header.SeriesInstanceUID, k)
    ds.InstanceNumber = k + 1
    position = index_affine_lps(spec.image) @ np.array([0.0, 0.0, k, 1.0])
    ds.ImagePositionPatient = [f"{v:.6f}" for v in position[:3]]
    normal = np.asarray(spec.image.GetDirection(), dtype=float).reshape(3, 3)[:, 2]
    ds.SliceLocation = f"{float(position[:3] @ normal):.6f}"
    pixels = np.round(sitk.GetArrayViewFromImage(spec.image)[k]).clip(-32768, 32767).astype("<i2")
    ds.PixelData = pixels.tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.preamble = b"\0" * 128
    _save(ds, path)
    return path


@dataclass(frozen=True)
class SyntheticStudy:
    """What :func:`write_synthetic_brain_study` wrote.

    Attributes:
        folder: the study folder.
        series: sequence name (``t1``, ``t1ce``, ``t2``, ``flair``, and distractors such as ``localizer``)
            -> SeriesInstanceUID.
        truth: sequence name -> (4, 4) LPS point transform from atlas (SRI24) space to that series'
            scanner space: what registration should recover.
        images: sequence name -> the written image (SimpleITK, before int16 rounding).
    """

    folder: Path
    series: dict[str, str]
    truth: dict[str, np.ndarray]
    images: dict[str, sitk.Image]


#: Intensity remaps of the atlas T1 (values 0..~860) into the synthetic contrasts (applied inside the brain).
CONTRASTS = {
    "t1": lambda x: x,
    "t1ce": lambda x: 1.1 * x,
    "t2": lambda x: 1000.0 - 0.8 * x + 0.0005 * x**2,
    "flair": lambda x: 300.0 + 0.9 * x - 0.0006 * x**2,
}
# Default acquisition of each sequence: (spacing factor per axis relative to ``spacing``, oblique tilt in
# degrees about the left-right axis, rigid motion (rotation degrees xyz, shift mm) relative to the T1-CE).
_ACQUISITION = {
    "t1": ((1.0, 1.0, 1.0), 0.0, ((1.5, -1.0, 2.0), (1.5, -2.0, 1.0))),
    "t1ce": ((1.0, 1.0, 1.0), 0.0, ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0))),
    "t2": ((0.8, 0.8, 1.5), 0.0, ((-2.0, 1.0, -1.5), (-1.0, 2.5, -1.5))),
    "flair": ((0.9, 0.9, 1.6), 8.0, ((1.0, 2.0, 1.0), (2.0, 1.0, -2.0))),
}
_TAGS = {
    "t1": dict(
        description="AX T1 MPRAGE", echo_time=2.5, repetition_time=1900.0, inversion_time=900.0, series_time="100500"
    ),
    "t1ce": dict(
        description="AX T1 MPRAGE POST",
        echo_time=2.5,
        repetition_time=1900.0,
        inversion_time=900.0,
        contrast_agent="Gadobutrol",
        series_time="103000",
    ),
    "t2": dict(
        description="AX T2 TSE",
        echo_time=95.0,
        repetition_time=5000.0,
        series_time="101000",
        acquisition_type="2D",
        scanning_sequence="SE",
    ),
    "flair": dict(
        description="AX T2 FLAIR",
        echo_time=120.0,
        repetition_time=9000.0,
        inversion_time=2500.0,
        series_time="101500",
        acquisition_type="2D",
        scanning_sequence=["SE", "IR"],
    ),
}


def write_synthetic_brain_study(
    out_dir: str | Path,
    spacing: float = 3.0,
    head_motion: tuple[Sequence[float], Sequence[float]] = ((6.0, -4.0, 5.0), (-118.0, 121.0, -70.0)),
    sequences: Sequence[str] = ("t1", "t2", "flair", "t1ce"),
    distractors: bool = True,
    tag_overrides: Mapping[str, Mapping[str, Any]] | None = None,
    patient_id: str = "SYNTH0001",
    seed: int | str = 0,
) -> SyntheticStudy:
    """Write a skull-stripped brain study made from the shipped SRI24 atlas.

    Args:
        out_dir: destination folder.
        spacing: base in-plane spacing in mm (T2 and FLAIR use finer in-plane, thicker slices). 3 mm keeps a
            study around 1 MB for tests; 1 mm gives clinical-size series.
        head_motion: (rotation degrees about x, y, z; shift in mm) placing the atlas head in scanner
            coordinates (the default moves the brain centre near the scanner isocentre).
        sequences: which of ``t1``, ``t1ce``, ``t2``, ``flair`` to write, in acquisition order.
        distractors: also write a 3-plane localiser, a DWI series and a derived ADC map.
        tag_overrides: per-sequence :class:`SeriesSpec` fields to replace (e.g. remove the contrast tag).
        patient_id: PatientID.
        seed: UID seed.

    Returns:
        The :class:`SyntheticStudy` with the ground-truth transforms.
    """
    atlas = load_atlas(1.5)
    brain_centre = np.asarray(
        atlas.t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in atlas.t1.GetSize()])
    )
    head = rigid_matrix(*head_motion, brain_centre)
    tag_overrides = tag_overrides or {}
    specs, names, truth, images = [], [], {}, {}
    for name in sequences:
        factors, tilt, motion = _ACQUISITION[name]
        to_scanner = rigid_matrix(*motion, head @ np.r_[brain_centre, 1.0]) @ head  # atlas point -> scanner point
        image = _acquire(atlas.t1, atlas.mask, to_scanner, spacing * np.asarray(factors), tilt, CONTRASTS[name])
        specs.append(SeriesSpec(image=image, **{**_TAGS[name], **tag_overrides.get(name, {})}))
        names.append(name)
        truth[name], images[name] = to_scanner, image
    if distractors:
        for name, spec in _distractor_specs(specs[0].image).items():
            specs.append(spec)
            names.append(name)
    written = write_dicom_study(specs, out_dir, patient_id=patient_id, seed=seed)
    return SyntheticStudy(
        folder=Path(out_dir), series=dict(zip(names, written, strict=True)), truth=truth, images=images
    )


def _acquire(
    t1: sitk.Image, mask: sitk.Image, to_scanner: np.ndarray, spacing: np.ndarray, tilt_deg: float, contrast
) -> sitk.Image:
    """Resample the atlas into a scanner-space grid centred on the moved brain, with a tissue contrast."""
    field_of_view = np.array([240.0, 240.0, 160.0])
    size = np.ceil(field_of_view / spacing).astype(int)
    rotation = rigid_matrix((tilt_deg, 0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0))[:3, :3]
    centre = (
        to_scanner
        @ np.r_[np.asarray(t1.TransformContinuousIndexToPhysicalPoint([(n - 1) / 2 for n in t1.GetSize()])), 1.0]
    )
    affine = np.eye(4)
    affine[:3, :3] = rotation * spacing[None, :]
    affine[:3, 3] = centre[:3] - affine[:3, :3] @ ((size - 1) / 2)
    grid = make_grid(size.tolist(), affine)
    from_scanner = np.linalg.inv(to_scanner)
    values = sitk.GetArrayFromImage(resample(t1, grid, from_scanner))
    inside = sitk.GetArrayFromImage(resample(sitk.Cast(mask, sitk.sitkFloat32), grid, from_scanner)) > 0.5
    out = sitk.GetImageFromArray(np.where(inside, contrast(values), 0.0).astype(np.float32))
    out.CopyInformation(grid)
    return out


def _distractor_specs(reference: sitk.Image) -> dict[str, SeriesSpec]:
    """Series every study has and identification must drop: localiser, DWI, derived ADC."""
    small = sitk.Image([32, 32, 3], sitk.sitkInt16)
    small.SetSpacing([7.5, 7.5, 10.0])
    small.SetOrigin(reference.GetOrigin())
    dwi_affine = index_affine_lps(reference) @ np.diag([*(np.array([6.0, 6.0, 8.0]) / reference.GetSpacing()), 1.0])
    dwi = resample(reference, make_grid([40, 40, 20], dwi_affine))
    return {
        "localizer": SeriesSpec(
            small + 100,
            "3-plane localizer",
            echo_time=1.6,
            repetition_time=4.0,
            series_time="100000",
            image_type=("ORIGINAL", "PRIMARY", "LOCALIZER", "NONE"),
            acquisition_type="2D",
        ),
        "dwi": SeriesSpec(
            dwi,
            "ep2d_diff_3scan_trace",
            echo_time=89.0,
            repetition_time=6000.0,
            series_time="102000",
            image_type=("ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"),
            acquisition_type="2D",
            scanning_sequence="EP",
        ),
        "adc": SeriesSpec(
            dwi,
            "ep2d_diff_3scan_trace_ADC",
            echo_time=89.0,
            repetition_time=6000.0,
            series_time="102000",
            image_type=("DERIVED", "PRIMARY", "DIFFUSION", "ADC", "ND"),
            acquisition_type="2D",
            scanning_sequence="EP",
        ),
    }
