import sys

import highdicom as hd
import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy.spatial.transform import Rotation

from data_prep.dicom_study_writer import SeriesSpec, write_dicom_study
from monai_protoshare.explain.dicom_seg import read_series, series_label_volume, write_evidence_seg

SIZE = (12, 10, 6)  # columns, rows, slices


@pytest.fixture
def series(tmp_path):
    """An oblique, anisotropic single-series T1-CE study, its voxel array (slices, rows, columns) and a blob."""
    image = sitk.Image(list(SIZE), sitk.sitkFloat32)
    image.SetSpacing([1.5, 2.0, 4.0])
    image.SetDirection(Rotation.from_euler("xyz", [10, 5, -20], degrees=True).as_matrix().ravel().tolist())
    image.SetOrigin([10.0, -20.0, 5.0])
    blob = np.zeros(SIZE[::-1], dtype=np.float32)
    blob[2:4, 3:6, 4:9] = 1.0
    blob[4, 1, 1] = 1.0  # an asymmetric voxel: a flip or transposition would move it
    scan = sitk.GetImageFromArray(100.0 * blob)
    scan.CopyInformation(image)
    files = write_dicom_study([SeriesSpec(scan, "AX T1 MPRAGE POST")], tmp_path / "dicom")
    [(series_uid, paths)] = files.items()
    label_path = tmp_path / "label.nii.gz"
    sitk.WriteImage(sitk.Cast(scan > 50, sitk.sitkUInt8), str(label_path))
    return series_uid, paths, blob > 0, label_path


def test_label_volume_is_sampled_on_each_source_instance(series):
    series_uid, paths, blob, label_path = series
    datasets = read_series(paths[::-1])  # any order: frame i follows datasets[i]
    labels = series_label_volume(nib.load(label_path), datasets)
    assert labels.shape == (SIZE[2], SIZE[1], SIZE[0]) and labels.dtype == np.uint8
    for frame, ds in zip(labels, datasets, strict=True):
        assert np.array_equal(frame, blob[int(ds.InstanceNumber) - 1])


def test_label_volume_uses_world_coordinates_not_voxel_order(series):
    _, paths, blob, label_path = series
    image = nib.load(label_path)
    flipped = np.asarray(image.dataobj)[::-1, :, ::-1]  # same voxels, stored reversed along two axes
    affine = image.affine @ np.array(
        [[-1, 0, 0, SIZE[0] - 1], [0, 1, 0, 0], [0, 0, -1, SIZE[2] - 1], [0, 0, 0, 1]], dtype=float
    )
    datasets = read_series(paths)
    labels = series_label_volume(nib.Nifti1Image(np.ascontiguousarray(flipped), affine), datasets)
    assert np.array_equal(labels, blob[[int(ds.InstanceNumber) - 1 for ds in datasets]])


def test_seg_reads_back_on_the_source_series_and_frame_of_reference(series, tmp_path):
    series_uid, paths, blob, label_path = series
    datasets = read_series(paths)
    labels = series_label_volume(nib.load(label_path), datasets)
    path = write_evidence_seg(labels, datasets, tmp_path / "out" / "evidence_seg.dcm")

    raw = pydicom.dcmread(path)
    assert raw.Modality == "SEG" and raw.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"  # Segmentation Storage
    assert raw.FrameOfReferenceUID == datasets[0].FrameOfReferenceUID
    assert raw.StudyInstanceUID == datasets[0].StudyInstanceUID
    assert raw.PatientID == datasets[0].PatientID
    assert raw.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid
    assert raw.SeriesInstanceUID != series_uid

    seg = hd.seg.segread(path)
    uids = [ds.SOPInstanceUID for ds in datasets]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=uids, segment_numbers=[1])
    assert np.array_equal(pixels[..., 0], labels)
    assert labels.sum() == blob.sum()
    assert seg.get_segment_description(1).segment_label == "Prototype evidence"


def test_an_empty_overlay_still_gives_a_valid_seg(series, tmp_path):
    _, paths, _, _ = series
    datasets = read_series(paths)
    path = write_evidence_seg(np.zeros((SIZE[2], SIZE[1], SIZE[0]), np.uint8), datasets, tmp_path / "empty.dcm")
    assert int(hd.seg.segread(path).NumberOfFrames) == SIZE[2]


def test_bad_inputs_raise(series, tmp_path):
    _, paths, _, _ = series
    datasets = read_series(paths)
    with pytest.raises(ValueError, match="labels must be"):
        write_evidence_seg(np.zeros((2, 3, 4)), datasets, tmp_path / "x.dcm")
    with pytest.raises(FileNotFoundError, match="not found"):
        read_series([tmp_path / "missing.dcm"])
    with pytest.raises(ValueError, match="3-D"):
        series_label_volume(nib.Nifti1Image(np.zeros((2, 2)), np.eye(4)), datasets)


def test_a_missing_dicom_extra_is_named_with_its_install_command(series, tmp_path, monkeypatch):
    _, paths, _, label_path = series
    datasets = read_series(paths)
    labels = series_label_volume(nib.load(label_path), datasets)
    message = r"DICOM SEG needs {}: pip install 'monai_protoshare\[dicom\]'"
    monkeypatch.setitem(sys.modules, "highdicom", None)  # its import now fails as if it were not installed
    with pytest.raises(ImportError, match=message.format("highdicom")):
        write_evidence_seg(labels, datasets, tmp_path / "seg.dcm")
    assert not (tmp_path / "seg.dcm").exists()
    monkeypatch.setitem(sys.modules, "pydicom", None)
    with pytest.raises(ImportError, match=message.format("pydicom")):
        read_series(paths)
