"""End to end: a generated DICOM study (and four NIfTI files) into the BraTS-2020 layout in SRI24 space."""

from __future__ import annotations

import csv
import json
import shutil

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from data_prep.atlas import load_atlas
from data_prep.brats_layout import NAME_MAPPING_COLUMNS, update_name_mapping
from data_prep.clinical_simulation import simulate_clinical_case
from data_prep.dicom_study_writer import CONTRASTS
from data_prep.geometry import LPS_TO_RAS
from data_prep.known_motion import transform_error_deg, transform_error_mm
from data_prep.native_space import load_case_record, map_to_original
from data_prep.pipeline import PrepOptions, prepare_dicom_study, prepare_nifti_case
from data_prep.quality import MIN_ATLAS_DICE, RegistrationQualityError, foreground

from .conftest import TEST_REGISTRATION_SPACING

SEQUENCES = ("t1", "t1ce", "t2", "flair")
FAST = PrepOptions(skull_strip=False, registration_spacing=TEST_REGISTRATION_SPACING, threads=2)
#: The BraTS grid at 1.5 mm as a nibabel affine (LPS origin (0.25, -238.75, 0.25)).
BRATS_1P5_AFFINE = np.array([[-1.5, 0, 0, -0.25], [0, -1.5, 0, 238.75], [0, 0, 1.5, 0.25], [0, 0, 0, 1]])


@pytest.fixture(scope="module")
def prepared(study, tmp_path_factory):
    """The session's DICOM study prepared once: (output root, case folder)."""
    out = tmp_path_factory.mktemp("prepared")
    case = prepare_dicom_study(study.folder, out, "CASE001", FAST)
    update_name_mapping(out, {"CASE001": "NA"})
    return out, case


def test_dicom_study_lands_in_the_brats_layout_on_the_1p5mm_sri24_grid(prepared):
    out, case = prepared
    assert case == out / "CASE001"
    for sequence in SEQUENCES:
        image = nib.load(case / f"CASE001_{sequence}.nii.gz")
        assert image.shape == (160, 160, 103) and image.get_data_dtype() == np.float32
        np.testing.assert_allclose(image.affine, BRATS_1P5_AFFINE, atol=1e-4)
        assert np.count_nonzero(np.asarray(image.dataobj)) > 50_000
    assert sorted(p.name for p in (case / "native").iterdir()) == sorted(
        f"CASE001_{s}.{ext}" for s in SEQUENCES for ext in ("nii.gz", "json")
    )
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no working folder left behind
    with open(out / "name_mapping.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == NAME_MAPPING_COLUMNS
    assert rows == [{**{c: "NA" for c in NAME_MAPPING_COLUMNS}, "BraTS_2020_subject_ID": "CASE001"}]


def test_composed_transforms_match_the_known_motion_of_every_series(prepared, study):
    record = load_case_record(prepared[1])
    atlas = load_atlas(1.5)
    for sequence in SEQUENCES:
        found = np.asarray(record["sequences"][sequence]["output_to_original_lps"])
        mean, worst = transform_error_mm(atlas, found, study.truth[sequence])
        print(f"{sequence}: end-to-end transform error mean {mean:.2f} mm, max {worst:.2f} mm")
        assert mean < 1.0 and worst < 1.5


def test_output_sequences_are_aligned_with_the_atlas(prepared):
    atlas = load_atlas(1.5)
    t1 = sitk.GetArrayFromImage(atlas.t1).transpose(2, 1, 0)
    # Away from the brain's edge, where partial volume with the zero background blurs every contrast.
    core = ndimage.binary_erosion(sitk.GetArrayFromImage(atlas.mask).transpose(2, 1, 0) > 0, iterations=2)
    for sequence in SEQUENCES:
        volume = np.asarray(nib.load(prepared[1] / f"CASE001_{sequence}.nii.gz").dataobj)
        expected = CONTRASTS[sequence](t1[core])  # the contrast the study was generated with
        assert np.corrcoef(expected, volume[core])[0, 1] > 0.9, sequence


def test_record_holds_original_geometry_sources_and_quality(prepared, study):
    record = json.loads((prepared[1] / "CASE001_data_prep.json").read_text())
    assert "LPS" in record["convention"]
    for sequence in SEQUENCES:
        entry = record["sequences"][sequence]
        native = nib.load(prepared[1] / entry["source"]["native_nifti"])
        assert tuple(entry["original"]["shape"]) == native.shape
        np.testing.assert_allclose(entry["original"]["affine_ras"], native.affine, atol=1e-4)
        np.testing.assert_allclose(LPS_TO_RAS @ np.asarray(entry["original"]["affine_lps"]), native.affine, atol=1e-4)
        assert entry["source"]["identification"]["series_uid"] == study.series[sequence]
        assert len(entry["source"]["files"]) == study.images[sequence].GetSize()[2]
    assert record["quality"]["atlas_dice"] > 0.85
    # Every QC score against the reference (T1): foreground Dice and the sequence-agreement NMI and gain.
    assert min(record["quality"][f"{s}_dice"] for s in ("t1ce", "t2", "flair")) > 0.9
    assert min(record["quality"][f"{s}_nmi"] for s in ("t1ce", "t2", "flair")) > 1.04
    assert max(record["quality"][f"{s}_nmi_gain"] for s in ("t1ce", "t2", "flair")) <= 0.0
    assert record["sequences"]["t1"]["registration"]["fixed"] == "sri24"
    assert {record["sequences"][s]["registration"]["fixed"] for s in ("t1ce", "t2", "flair")} == {"t1"}


def _stripped(image: sitk.Image) -> sitk.Image:
    """``image`` with the background set to 0, as a skull-stripped NIfTI input has it (tissue mask, holes filled)."""
    values = sitk.GetArrayFromImage(image)
    brain = ndimage.binary_fill_holes(ndimage.binary_opening(foreground(values), iterations=1))
    out = sitk.GetImageFromArray(np.where(brain, values, 0.0).astype(np.float32))
    out.CopyInformation(image)
    return out


@pytest.mark.slow  # four registrations and the QC: about 37 s of CPU
def test_simulated_clinical_acquisition_lands_where_its_known_transforms_say(atlas3, tmp_path):
    # Tiny clinical study (2 mm pixels, 5-6 mm slices, a 12 degree tilt, bias, tumour, four contrasts): the
    # pipeline registers T1 -> atlas and the others -> T1, and each composed record transform is the truth.
    case = simulate_clinical_case(atlas3, seed=3, in_plane_mm=2.0)
    paths = {}
    for sequence, image in case.images.items():
        paths[sequence] = tmp_path / f"{sequence}.nii.gz"
        sitk.WriteImage(_stripped(image), str(paths[sequence]))
    record = load_case_record(prepare_nifti_case(paths, tmp_path / "out", "CLIN01", FAST))
    for sequence in SEQUENCES:
        found = np.asarray(record["sequences"][sequence]["output_to_original_lps"])
        mean, worst = transform_error_mm(atlas3, found, case.truth[sequence])
        degrees = transform_error_deg(found, case.truth[sequence])
        print(f"{sequence}: pipeline error mean {mean:.2f} mm, max {worst:.2f} mm, {degrees:.2f} degrees")
        assert mean < 1.0 and worst < 1.5 and degrees < 1.0, sequence
    # The composition: output -> T1 (the atlas step), then T1 -> sequence (its own step).
    for sequence in ("t1ce", "t2", "flair"):
        step = np.asarray(record["sequences"][sequence]["registration"]["to_reference_lps"])
        reference = np.asarray(record["sequences"]["t1"]["output_to_original_lps"])
        np.testing.assert_allclose(record["sequences"][sequence]["output_to_original_lps"], step @ reference)
    assert set(record["quality"]) == {"atlas_dice"} | {
        f"{s}_{score}" for s in ("t1ce", "t2", "flair") for score in ("dice", "nmi", "nmi_gain")
    }


def test_map_to_original_returns_the_native_grid_and_content(prepared):
    record = load_case_record(prepared[1])
    t1ce_out = nib.load(prepared[1] / "CASE001_t1ce.nii.gz")
    native = nib.load(prepared[1] / "native" / "CASE001_t1ce.nii.gz")
    back = map_to_original(t1ce_out, record, sequence="t1ce")
    assert back.shape == native.shape
    np.testing.assert_allclose(back.affine, native.affine, atol=1e-4)
    a, b = back.get_fdata(), native.get_fdata()
    inside = (a > 0) & (b > 0)
    assert np.corrcoef(a[inside], b[inside])[0, 1] > 0.95


def test_map_to_original_puts_a_blob_where_the_known_transform_says(prepared, study):
    record = load_case_record(prepared[1])
    shape = tuple(record["output"]["shape"])
    labels = np.zeros(shape, dtype=np.uint8)
    ijk = np.array([70, 90, 55])
    labels[ijk[0] - 2 : ijk[0] + 3, ijk[1] - 2 : ijk[1] + 3, ijk[2] - 2 : ijk[2] + 3] = 7
    back = map_to_original(labels, prepared[1] / "CASE001_data_prep.json", sequence="flair", interpolation="nearest")
    assert back.get_data_dtype() == np.uint8 and set(np.unique(np.asarray(back.dataobj))) == {0, 7}
    # Where the blob's centre must land: output point -> (true) FLAIR scanner point -> FLAIR voxel.
    point_lps = np.asarray(record["output"]["affine_lps"]) @ [*ijk, 1.0]
    expected_ras = LPS_TO_RAS @ study.truth["flair"] @ point_lps
    centre = np.argwhere(np.asarray(back.dataobj) == 7).mean(axis=0)
    found_ras = back.affine @ [*centre, 1.0]
    assert np.linalg.norm(found_ras[:3] - expected_ras[:3]) < 3.0  # FLAIR voxels are 2.7 x 2.7 x 4.8 mm


def test_map_to_original_rejects_an_array_of_another_shape(prepared):
    with pytest.raises(ValueError, match=r"output shape \(160, 160, 103\)"):
        map_to_original(np.zeros((128, 128, 96)), prepared[1])


def test_existing_case_is_kept_unless_overwrite(prepared, study):
    out, case = prepared
    before = (case / "CASE001_data_prep.json").read_text()
    with pytest.raises(FileExistsError, match="overwrite"):
        prepare_dicom_study(study.folder, out, "CASE001", FAST)
    assert (case / "CASE001_data_prep.json").read_text() == before
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_nifti_input_at_1mm_gives_the_brats_grid(small_nifti, tmp_path):
    options = PrepOptions(spacing=1.0, skull_strip=False, registration_spacing=TEST_REGISTRATION_SPACING, threads=2)
    case = prepare_nifti_case(small_nifti, tmp_path, "NIFTI01", options)
    image = nib.load(case / "NIFTI01_flair.nii.gz")
    assert image.shape == (240, 240, 155)
    np.testing.assert_allclose(image.affine, [[-1, 0, 0, 0], [0, -1, 0, 239], [0, 0, 1, 0], [0, 0, 0, 1]], atol=1e-4)
    record = load_case_record(case)
    assert record["sequences"]["t2"]["source"] == {"kind": "nifti", "path": str(small_nifti["t2"].resolve())}
    assert record["options"]["skull_strip"] is False  # NIfTI input is taken as already skull-stripped
    assert not (case / "native").exists()


def test_failed_quality_check_fails_loudly_and_leaves_nothing(small_nifti, tmp_path):
    paths = dict(small_nifti)
    # A T1 (the sequence registered to the atlas) whose upper two thirds are missing: no rigid alignment can
    # match the atlas brain.
    t1 = nib.load(paths["t1"])
    data = np.asarray(t1.dataobj).copy()
    data[:, :, data.shape[2] // 3 :] = 0
    paths["t1"] = tmp_path / "cut_t1.nii.gz"
    nib.save(nib.Nifti1Image(data, t1.affine), paths["t1"])
    with pytest.raises(RegistrationQualityError, match="BAD01.*t1 -> SRI24 brain-mask Dice") as error:
        prepare_nifti_case(paths, tmp_path / "out", "BAD01", FAST)
    assert error.value.scores["atlas_dice"] < MIN_ATLAS_DICE
    assert list((tmp_path / "out").iterdir()) == []


def test_nifti_input_errors_name_the_sequence(tmp_path):
    with pytest.raises(KeyError, match="exactly the keys"):
        prepare_nifti_case({"t1": "a.nii.gz"}, tmp_path, "X1", FAST)
    paths = {s: tmp_path / f"{s}.nii.gz" for s in SEQUENCES}
    with pytest.raises(FileNotFoundError, match="X1: t1 file"):
        prepare_nifti_case(paths, tmp_path, "X1", FAST)
    with pytest.raises(ValueError, match="subject_id"):
        prepare_nifti_case(paths, tmp_path, "../escape", FAST)


def test_options_are_checked():
    with pytest.raises(ValueError, match="spacing"):
        PrepOptions(spacing=2.0)
    with pytest.raises(ValueError, match="did you mean 'simpleitk'"):
        PrepOptions(backend="simpleitkk")


def test_brats_reader_accepts_the_layout_once_a_grade_and_seg_are_known(prepared, tmp_path):
    brats = pytest.importorskip("monai_protoshare.data.brats")
    root = tmp_path / "labelled"
    shutil.copytree(prepared[1], root / "CASE001", ignore=shutil.ignore_patterns("native"))
    t1ce = nib.load(root / "CASE001" / "CASE001_t1ce.nii.gz")
    nib.save(nib.Nifti1Image(np.zeros(t1ce.shape, np.uint8), t1ce.affine), root / "CASE001" / "CASE001_seg.nii.gz")
    update_name_mapping(root, {"CASE001": "HGG"})
    items = brats.load_brats_datalist(root, cache=False)
    assert [item["subject_id"] for item in items] == ["CASE001"]
    assert items[0]["image"] == [str((root / "CASE001" / f"CASE001_{s}.nii.gz").resolve()) for s in SEQUENCES]
    assert items[0]["label"] == 1


def test_brats_reader_reads_a_clinical_case_without_seg_or_grade(prepared):
    from monai_protoshare.data.brats import BratsDatasetError, load_brats_datalist

    with pytest.raises(BratsDatasetError, match="unknown grade"):  # training needs labels
        load_brats_datalist(prepared[0], cache=False)
    items = load_brats_datalist(prepared[0], cache=False, labelled=False)
    assert items[0]["subject_id"] == "CASE001" and items[0]["seg"] is None and items[0]["label"] is None
