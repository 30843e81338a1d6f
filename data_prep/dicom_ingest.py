"""A DICOM study folder to four NIfTI volumes: scan headers, check, identify, convert with dcm2niix.

1. :func:`scan_study` reads every file's header (pydicom, no pixels) and groups them by SeriesInstanceUID;
   files that are not DICOM at all (no ``DICM`` prefix: notes, ``.DS_Store``) are skipped, a file that
   claims to be DICOM but has no usable header is an error naming the file.
2. :func:`check_single_patient`: every series must belong to one PatientID.
3. :func:`~data_prep.sequence_identification.identify_sequences` picks T1, T1-CE, T2 and FLAIR.
4. :func:`validate_series` reads the four chosen series fully: truncated pixel data, mixed orientations,
   missing slices and several volumes in one series are errors naming the series and the file.
5. :func:`convert_series` runs the ``dcm2niix`` binary shipped in the ``dcm2niix`` wheel on each chosen
   series alone (``-z y -b y -ba y``: gzip, BIDS JSON sidecar, anonymised sidecar).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import tempfile
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:  # the `dicom` extra; data_prep.pipeline imports this module only for DICOM input
    import pydicom
    from pydicom.errors import InvalidDicomError
except ImportError as err:
    raise ImportError("DICOM input needs pydicom: pip install 'monai_protoshare[dicom]'") from err

from data_prep.sequence_identification import Identification, SeriesInfo, identify_sequences

__all__ = [
    "ConvertedSeries",
    "check_single_patient",
    "convert_series",
    "dcm2niix_binary",
    "load_dicom_study",
    "scan_study",
    "validate_series",
]

logger = logging.getLogger(__name__)

#: Relative tolerance on slice spacing before a series is said to have a gap.
SLICE_GAP_TOLERANCE = 0.1


@dataclass(frozen=True)
class ConvertedSeries:
    """One identified series converted to NIfTI.

    Attributes:
        identification: which series and why.
        nifti: the ``.nii.gz`` written by dcm2niix.
        sidecar: its BIDS JSON sidecar.
    """

    identification: Identification
    nifti: Path
    sidecar: Path


def _float(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = ds.get(keyword)
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _seconds(time_value: object) -> float | None:
    """DICOM TM (``HHMMSS.FFFFFF`` or ``HH:MM:SS``) to seconds after midnight."""
    text = str(time_value or "").replace(":", "").strip()
    if len(text) < 2 or not text[:2].isdigit():
        return None
    hours, minutes = int(text[:2]), int(text[2:4] or 0)
    try:
        seconds = float(text[4:] or 0.0)
    except ValueError:
        seconds = 0.0
    return 3600.0 * hours + 60.0 * minutes + seconds


def _has_dicm_prefix(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(128)
        return f.read(4) == b"DICM"


def scan_study(folder: str | Path) -> list[SeriesInfo]:
    """Read every DICOM header under ``folder`` (recursively) and group the files by series.

    Returns:
        One :class:`SeriesInfo` per SeriesInstanceUID, sorted by SeriesNumber.

    Raises:
        FileNotFoundError: ``folder`` does not exist or holds no DICOM file.
        ValueError: a file has the ``DICM`` prefix but no readable header or no SeriesInstanceUID.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"DICOM study folder {folder} does not exist")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            skipped += 1
            continue
        except Exception as err:  # pydicom raises many types on damaged headers
            raise ValueError(
                f"corrupt DICOM file {path}: its header cannot be read ({type(err).__name__}: {err})"
            ) from err
        uid = str(ds.get("SeriesInstanceUID", "")).strip()
        if not uid or "SOPInstanceUID" not in ds:
            if _has_dicm_prefix(path):
                raise ValueError(f"corrupt DICOM file {path}: no SeriesInstanceUID/SOPInstanceUID in its header")
            skipped += 1
            continue
        groups[uid].append((path, ds))
    if skipped:
        logger.info("skipped %d non-DICOM files under %s", skipped, folder)
    if not groups:
        raise FileNotFoundError(f"no DICOM files under {folder}")
    series = [_series_info(uid, members) for uid, members in groups.items()]
    return sorted(series, key=lambda info: (info.series_number is None, info.series_number or 0, info.series_uid))


def _series_info(uid: str, members: list[tuple[Path, pydicom.Dataset]]) -> SeriesInfo:
    ds = members[0][1]
    number = ds.get("SeriesNumber")
    frames = sum(int(m.get("NumberOfFrames", 1) or 1) for _, m in members)
    return SeriesInfo(
        series_uid=uid,
        series_number=int(number) if number not in (None, "") else None,
        description=str(ds.get("SeriesDescription", "") or ""),
        protocol_name=str(ds.get("ProtocolName", "") or ""),
        sequence_name=str(ds.get("SequenceName", "") or ""),
        image_type=tuple(str(v) for v in (ds.get("ImageType") or ())),
        modality=str(ds.get("Modality", "") or ""),
        echo_time=_float(ds, "EchoTime"),
        repetition_time=_float(ds, "RepetitionTime"),
        inversion_time=_float(ds, "InversionTime"),
        contrast_agent=str(ds.get("ContrastBolusAgent", "") or ""),
        series_time=_seconds(ds.get("SeriesTime") or ds.get("AcquisitionTime")),
        acquisition_type=str(ds.get("MRAcquisitionType", "") or ""),
        patient_id=str(ds.get("PatientID", "") or ds.get("PatientName", "") or ""),
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        n_slices=frames,
        slice_thickness=_float(ds, "SliceThickness"),
        files=[path for path, _ in members],
    )


def check_single_patient(series: list[SeriesInfo]) -> None:
    """Raise when the series do not all belong to one patient (PatientID, else PatientName).

    Raises:
        ValueError: naming each series whose patient differs from the majority's.
    """
    counts = Counter(info.patient_id for info in series)
    if len(counts) <= 1:
        studies = {info.study_uid for info in series}
        if len(studies) > 1:
            logger.warning("the folder holds %d studies of one patient; T1/T1-CE order uses SeriesTime", len(studies))
        return
    (majority, n_majority), *rest = counts.most_common()
    tie = rest[0][1] == n_majority
    odd = [info for info in series if tie or info.patient_id != majority]
    lines = "\n".join(f"  {info.label}: PatientID {info.patient_id!r}" for info in odd)
    expected = "one patient" if tie else f"PatientID {majority!r} like the other {n_majority} series"
    raise ValueError(f"series of a different patient in one study folder (expected {expected}):\n{lines}")


def validate_series(info: SeriesInfo) -> None:
    """Read the series' files fully and check they make one complete volume.

    Raises:
        ValueError: naming the series (and the file) for a corrupt or truncated file, missing pixel data,
            mixed orientations, several volumes in one series, or a gap in the slice positions.
    """
    orientations, positions = [], []
    for path in info.files:
        try:
            ds = pydicom.dcmread(path)
        except Exception as err:
            raise ValueError(f"{info.label}: corrupt DICOM file {path} ({type(err).__name__}: {err})") from err
        if "PixelData" not in ds:
            raise ValueError(f"{info.label}: file {path} has no pixel data")
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            frames = int(ds.get("NumberOfFrames", 1) or 1)
            expected = (
                int(ds.Rows) * int(ds.Columns) * frames * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
            )
            if len(ds.PixelData) < expected:
                raise ValueError(
                    f"{info.label}: corrupt DICOM file {path}: pixel data truncated ({len(ds.PixelData)} of {expected} bytes)"
                )
        if "ImageOrientationPatient" in ds and "ImagePositionPatient" in ds:
            orientations.append(np.asarray(ds.ImageOrientationPatient, dtype=float))
            positions.append(np.asarray(ds.ImagePositionPatient, dtype=float))
    if len(positions) < 2:  # enhanced multi-frame: geometry per frame, dcm2niix checks it
        return
    if np.abs(np.stack(orientations) - orientations[0]).max() > 1e-3:
        raise ValueError(f"{info.label}: mixes several slice orientations (a localiser or reformat?)")
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    along = np.sort(np.stack(positions) @ normal)
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise ValueError(
            f"{info.label}: {len(along)} images at {len(np.unique(along.round(3)))} slice positions "
            f"(several echoes, phases or volumes); choose a single-volume series with an override"
        )
    median = float(np.median(steps))
    if np.abs(steps - median).max() > SLICE_GAP_TOLERANCE * median + 0.01:
        raise ValueError(
            f"{info.label}: slice spacing varies from {steps.min():.2f} to {steps.max():.2f} mm "
            f"(a missing or corrupt slice file?)"
        )


def dcm2niix_binary() -> str:
    """Path of the ``dcm2niix`` executable shipped in the ``dcm2niix`` wheel.

    Raises:
        ImportError: the ``dcm2niix`` package is not installed.
    """
    try:
        import dcm2niix
    except ImportError as err:
        raise ImportError("DICOM input needs the dcm2niix wheel: pip install 'monai_protoshare[dicom]'") from err
    return str(dcm2niix.bin)


def convert_series(info: SeriesInfo, out_dir: str | Path, name: str) -> tuple[Path, Path]:
    """Convert one series alone with dcm2niix into ``out_dir/<name>.nii.gz`` and ``<name>.json``.

    Raises:
        ValueError: dcm2niix fails or splits the series into several volumes (named in the message).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="dcm_") as tmp:
        for index, path in enumerate(info.files):
            link = Path(tmp) / f"{index:05d}.dcm"
            try:
                os.symlink(path.resolve(), link)
            except OSError:  # file systems without symlinks
                shutil.copy2(path, link)
        command = [dcm2niix_binary(), "-z", "y", "-b", "y", "-ba", "y", "-f", name, "-o", str(out_dir), tmp]
        result = subprocess.run(command, capture_output=True, text=True)
    volumes = sorted(out_dir.glob(f"{name}*.nii.gz"))
    if result.returncode != 0 or len(volumes) != 1:
        found = "no volume" if not volumes else f"{len(volumes)} volumes ({', '.join(v.name for v in volumes)})"
        raise ValueError(
            f"{info.label}: dcm2niix exited with {result.returncode} and wrote {found}; expected one volume. "
            f"End of its log:\n{(result.stdout + result.stderr)[-1500:]}"
        )
    return volumes[0], volumes[0].with_name(volumes[0].name[: -len(".nii.gz")] + ".json")


def load_dicom_study(
    folder: str | Path, out_dir: str | Path, overrides: Mapping[str, object] | None = None
) -> dict[str, ConvertedSeries]:
    """Identify, check and convert the four sequences of the study in ``folder``.

    Args:
        folder: the study folder (any layout; files found recursively).
        out_dir: where the NIfTI volumes and sidecars go (``<sequence>.nii.gz``, ``<sequence>.json``).
        overrides: sequence -> SeriesInstanceUID, SeriesNumber or SeriesDescription.

    Returns:
        sequence name -> :class:`ConvertedSeries`, in the order T1, T1-CE, T2, FLAIR.

    Raises:
        FileNotFoundError, ValueError, KeyError: see :func:`scan_study`, :func:`check_single_patient`,
            :func:`~data_prep.sequence_identification.identify_sequences`, :func:`validate_series` and
            :func:`convert_series`; every message names the series or file.
    """
    series = scan_study(folder)
    check_single_patient(series)
    identified = identify_sequences(series, overrides)
    for ident in identified.values():
        validate_series(ident.series)
    converted = {}
    for sequence, ident in identified.items():
        nifti, sidecar = convert_series(ident.series, out_dir, sequence)
        converted[sequence] = ConvertedSeries(identification=ident, nifti=nifti, sidecar=sidecar)
        logger.info("%s <- %s (confidence %.2f)", sequence, ident.series.label, ident.confidence)
    return converted
