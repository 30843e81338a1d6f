"""BraTS reader: datalist contents, the release's naming variants, one error listing every problem, the cache."""

from __future__ import annotations

import csv
import gzip
import logging
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from monai_protoshare.data import brats, brats_cache, nifti_checks
from monai_protoshare.data.brats import BratsDatasetError, find_dataset_root, load_brats_datalist
from monai_protoshare.data.synthetic import generate_cohort


def _grades(root: Path) -> list[tuple[str, str]]:
    with open(root / "name_mapping.csv", newline="", encoding="utf-8") as f:
        return [(r["BraTS_2020_subject_ID"], r["Grade"]) for r in csv.DictReader(f)]


def _copy(cohort: Path, dest: Path) -> Path:
    return Path(shutil.copytree(cohort, dest, ignore=shutil.ignore_patterns(brats.CACHE_NAME)))


def _nifti_path(root: Path, sid: str, kind: str) -> Path:
    return root / sid / f"{sid}_{kind}.nii.gz"


def test_datalist_lists_every_case_in_csv_order_with_absolute_paths(tiny_cohort):
    datalist = load_brats_datalist(tiny_cohort)
    grades = _grades(tiny_cohort)
    assert [item["subject_id"] for item in datalist] == [sid for sid, _ in grades]
    assert [item["label"] for item in datalist] == [{"LGG": 0, "HGG": 1}[g] for _, g in grades]
    for item in datalist:
        sid = item["subject_id"]
        assert item["image"] == [str((tiny_cohort / sid / f"{sid}_{s}.nii.gz").resolve()) for s in brats.SEQUENCES]
        assert item["seg"] == str((tiny_cohort / sid / f"{sid}_seg.nii.gz").resolve())
        assert set(item) == {"image", "seg", "label", "subject_id"}


def test_kaggle_nesting_uncompressed_nii_and_the_case_355_seg_name_are_accepted(tiny_cohort, tmp_path):
    root = _copy(tiny_cohort, tmp_path / "kaggle" / "BraTS2020_TrainingData" / "MICCAI_BraTS2020_TrainingData")
    for path in root.glob("*/*.nii.gz"):  # the Kaggle copy stores .nii
        path.with_suffix("").write_bytes(gzip.decompress(path.read_bytes()))
        path.unlink()
    sid = "BraTS20_Training_003"
    (root / sid / f"{sid}_seg.nii").rename(root / sid / "W39_1998.09.19_Segm.nii")
    datalist = load_brats_datalist(tmp_path / "kaggle")
    assert find_dataset_root(tmp_path / "kaggle") == root.resolve()
    assert len(datalist) == 6 and all(p.endswith(".nii") for item in datalist for p in item["image"])
    assert datalist[2]["seg"] == str((root / sid / "W39_1998.09.19_Segm.nii").resolve())


@pytest.fixture(scope="module")
def broken_cohort(tmp_path_factory) -> tuple[Path, dict[str, tuple[str, str]]]:
    """Twelve cases, ten of them broken in ten different ways: subject -> (file, problem regex)."""
    root = generate_cohort(tmp_path_factory.mktemp("broken"), n_cases=12, seed=1, spacing=12.0, progress=False)
    sid = [f"BraTS20_Training_{i:03d}" for i in range(1, 13)]
    ref = nib.load(_nifti_path(root, sid[0], "t1"))
    data, affine = np.asarray(ref.dataobj), ref.affine

    _nifti_path(root, sid[0], "t1ce").unlink()
    flair = _nifti_path(root, sid[1], "flair")
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    _nifti_path(root, sid[2], "t2").write_bytes(b"this is not a NIfTI file")
    nib.save(nib.Nifti1Image(data[..., None].repeat(2, -1), affine), _nifti_path(root, sid[3], "t1"))
    nib.save(nib.Nifti1Image(np.zeros((5, 5, 5), np.uint8), affine), _nifti_path(root, sid[4], "seg"))
    shifted = affine.copy()
    shifted[0, 3] += 7.0
    nib.save(nib.Nifti1Image(data, shifted), _nifti_path(root, sid[5], "t2"))
    nan = data.copy()
    nan[3, 3, 3] = np.nan
    nib.save(nib.Nifti1Image(nan, affine), _nifti_path(root, sid[6], "flair"))
    seg = np.asarray(nib.load(_nifti_path(root, sid[7], "seg")).dataobj).copy()
    seg[0, 0, 0] = 3
    nib.save(nib.Nifti1Image(seg, affine), _nifti_path(root, sid[7], "seg"))
    rows = (root / "name_mapping.csv").read_text().splitlines()
    rows[9] = rows[9].replace("HGG", "GBM").replace("LGG", "GBM")  # sid[8]
    rows.append(rows[10])  # sid[9] listed twice
    (root / "name_mapping.csv").write_text("\n".join(rows) + "\n")
    singular = affine.copy()
    singular[2, 2] = 0.0
    flat = nib.Nifti1Image(data, None)
    flat.set_sform(singular, code=1)  # a qform cannot hold a singular matrix
    nib.save(flat, _nifti_path(root, sid[10], "t1"))
    expected = {
        sid[0]: (f"{sid[0]}_t1ce.nii.gz", "missing file"),
        sid[1]: (f"{sid[1]}_flair.nii.gz", "truncated"),
        sid[2]: (f"{sid[2]}_t2.nii.gz", "not a readable NIfTI"),
        sid[3]: (f"{sid[3]}_t1.nii.gz", "expected a 3-D image"),
        sid[4]: (f"{sid[4]}_seg.nii.gz", r"shape \(5, 5, 5\) differs"),
        sid[5]: (f"{sid[5]}_t2.nii.gz", r"affine differs .* 7 mm"),
        sid[6]: (f"{sid[6]}_flair.nii.gz", "1 NaN/Inf voxel"),
        sid[7]: (f"{sid[7]}_seg.nii.gz", r"labels 3 outside \{0, 1, 2, 4\}"),
        sid[8]: ("name_mapping.csv", "unknown grade 'GBM'"),
        sid[9]: ("name_mapping.csv", "duplicate id"),
        sid[10]: (f"{sid[10]}_t1.nii.gz", "singular affine"),
    }
    return root, expected


def test_one_error_names_every_broken_case_with_its_file_and_problem(broken_cohort):
    root, expected = broken_cohort
    with pytest.raises(BratsDatasetError) as info:
        load_brats_datalist(root, cache=False)
    err = info.value
    assert isinstance(err, ValueError)
    assert {p.subject for p in err.problems} == set(expected)  # the twelfth case is fine
    for subject, (file, pattern) in expected.items():
        found = [p for p in err.problems if p.subject == subject and p.file == file]
        assert any(re.search(pattern, p.problem) for p in found), (subject, found)
        assert subject in str(err) and file in str(err)
    assert "skip_bad=True" in str(err)


def test_skip_bad_keeps_the_good_case_and_warns_once(broken_cohort, caplog):
    root, expected = broken_cohort
    with caplog.at_level(logging.WARNING, logger="monai_protoshare.data.brats"):
        datalist = load_brats_datalist(root, skip_bad=True, cache=False)
    assert [item["subject_id"] for item in datalist] == ["BraTS20_Training_012"]
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and all(subject in warnings[0].getMessage() for subject in expected)


def test_mark_bad_keeps_every_row_in_order_with_the_problems_of_the_bad_ones(tiny_cohort, tmp_path):
    """Evaluation's skip_bad_cases: the folds need every subject, so bad cases stay, marked with their problems."""
    root = _copy(tiny_cohort, tmp_path / "c")
    flair = _nifti_path(root, "BraTS20_Training_003", "flair")
    flair.write_bytes(flair.read_bytes()[: flair.stat().st_size // 2])
    clean = load_brats_datalist(tiny_cohort)
    marked = load_brats_datalist(root, mark_bad=True, cache=False)
    assert [(m["subject_id"], m["label"]) for m in marked] == [(c["subject_id"], c["label"]) for c in clean]
    assert [m["subject_id"] for m in marked if "problems" in m] == ["BraTS20_Training_003"]
    [problem] = marked[2]["problems"]
    assert problem.startswith("BraTS20_Training_003_flair.nii.gz: ") and "truncated" in problem


def test_mark_bad_still_raises_for_a_case_without_a_grade(tiny_cohort, tmp_path):
    root = _copy(tiny_cohort, tmp_path / "c")
    table = root / "name_mapping.csv"
    lines = table.read_text().splitlines()
    lines[2] = "GBM," + lines[2].split(",", 1)[1]
    table.write_text("\n".join(lines) + "\n")
    with pytest.raises(BratsDatasetError, match="unknown grade 'GBM'") as info:
        load_brats_datalist(root, mark_bad=True, cache=False)
    assert {p.subject for p in info.value.problems} == {"BraTS20_Training_002"}


def test_rows_without_folders_and_folders_without_rows_are_reported(tiny_cohort, tmp_path):
    root = _copy(tiny_cohort, tmp_path / "c")
    shutil.rmtree(root / "BraTS20_Training_002")
    shutil.copytree(root / "BraTS20_Training_001", root / "BraTS20_Training_777")
    with pytest.raises(BratsDatasetError) as info:
        load_brats_datalist(root)
    problems = {(p.subject, p.file): p.problem for p in info.value.problems}
    assert "case folder is missing" in problems["BraTS20_Training_002", "BraTS20_Training_002/"]
    assert "without a row" in problems["BraTS20_Training_777", "BraTS20_Training_777/"]


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "empty file"),
        (b"Grade,Subject\nHGG,BraTS20_Training_001\n", "missing column.*BraTS_2020_subject_ID"),
        ("Grade,BraTS_2020_subject_ID\nHGG,Br\u00e4TS\n".encode("latin-1"), "not UTF-8"),
        (b"Grade,BraTS_2020_subject_ID\n", "no subject rows"),
    ],
)
def test_table_problems_raise_even_with_skip_bad(tiny_cohort, tmp_path, content, problem):
    root = _copy(tiny_cohort, tmp_path / "c")
    (root / "name_mapping.csv").write_bytes(content)
    with pytest.raises(BratsDatasetError, match=problem) as info:
        load_brats_datalist(root, skip_bad=True)
    assert info.value.problems[0].file == "name_mapping.csv"


def test_missing_root_or_table_gives_a_helpful_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist.*name_mapping.csv"):
        load_brats_datalist(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No name_mapping.csv in .* 3 levels below"):
        load_brats_datalist(tmp_path / "empty")


def test_second_call_reads_no_voxels_until_a_file_changes(tiny_cohort, tmp_path, monkeypatch):
    root = _copy(tiny_cohort, tmp_path / "c")
    first = load_brats_datalist(root)
    assert (root / brats.CACHE_NAME).is_file()
    read = []
    monkeypatch.setattr(nifti_checks, "check_voxels", lambda job: read.append(job[1].name))
    assert load_brats_datalist(root) == first and read == []
    flair = _nifti_path(root, "BraTS20_Training_004", "flair")
    nib.save(nib.load(flair), flair)  # rewritten: new modification time
    load_brats_datalist(root)
    assert read == [flair.name]


def test_cache_goes_to_the_user_cache_folder_when_the_data_folder_is_read_only(tiny_cohort, tmp_path, monkeypatch):
    root = _copy(tiny_cohort, tmp_path / "c")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    write_json = brats_cache.write_json

    def read_only_data(path, obj):
        if Path(path).parent == root.resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return write_json(path, obj)

    monkeypatch.setattr(brats_cache, "write_json", read_only_data)
    load_brats_datalist(root)
    assert not (root / brats.CACHE_NAME).exists()
    assert len(list((tmp_path / "user_cache" / "monai_protoshare" / "brats_validation").glob("*.json"))) == 1
    monkeypatch.setattr(nifti_checks, "check_voxels", lambda job: pytest.fail("voxels read despite the user cache"))
    load_brats_datalist(root)
