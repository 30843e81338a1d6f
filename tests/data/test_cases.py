import pytest

from monai_protoshare.data.cases import CLASS_NAMES, GRADE_LABELS, SEQUENCES, case_files, sequence_file, sequence_files


def _touch(folder, *names):
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).write_bytes(b"")


def test_class_names_follow_the_labels_and_sequences_the_channel_order():
    assert [CLASS_NAMES[label] for label in GRADE_LABELS.values()] == list(GRADE_LABELS)
    assert CLASS_NAMES == ("LGG", "HGG") and SEQUENCES == ("t1", "t1ce", "t2", "flair")


def test_sequence_file_prefers_nii_gz_and_is_none_when_absent(tmp_path):
    _touch(tmp_path, "c1_t1.nii", "c1_t1.nii.gz", "c1_seg.nii")
    assert sequence_file(tmp_path, "c1", "t1") == tmp_path / "c1_t1.nii.gz"
    assert sequence_file(tmp_path, "c1", "seg") == tmp_path / "c1_seg.nii"
    assert sequence_file(tmp_path, "c1", "t2") is None


def test_sequence_files_group_by_sequence_without_confusing_t1_and_t1ce(tmp_path):
    _touch(tmp_path, "b_t1ce.nii.gz", "a_t1.nii", "a_t1ce.nii.gz", "a_flair.nii.gz", "a_t1.json", "a_seg.nii.gz")
    (tmp_path / "x_t2.nii.gz").mkdir()  # a folder is not a file
    found = sequence_files(tmp_path)
    assert list(found) == list(SEQUENCES)
    assert {s: [p.name for p in paths] for s, paths in found.items()} == {
        "t1": ["a_t1.nii"],
        "t1ce": ["a_t1ce.nii.gz", "b_t1ce.nii.gz"],
        "t2": [],
        "flair": ["a_flair.nii.gz"],
    }


def test_case_files_finds_the_four_sequences_beside_any_one(tmp_path):
    _touch(tmp_path, "p_7_t1.nii.gz", "p_7_t1ce.nii", "p_7_t2.nii.gz", "p_7_flair.nii.gz")
    case, files = case_files(tmp_path / "p_7_t2.nii.gz")
    assert case == "p_7" and files == [
        str(tmp_path / n) for n in ("p_7_t1.nii.gz", "p_7_t1ce.nii", "p_7_t2.nii.gz", "p_7_flair.nii.gz")
    ]
    with pytest.raises(ValueError, match="must be named <case>_"):
        case_files(tmp_path / "p_7_dwi.nii.gz")
    (tmp_path / "p_7_flair.nii.gz").unlink()
    with pytest.raises(FileNotFoundError, match="no flair sequence p_7_flair.nii.gz beside p_7_t1.nii.gz"):
        case_files(tmp_path / "p_7_t1.nii.gz")
