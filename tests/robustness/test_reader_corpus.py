"""Bad inputs to the BraTS reader: each names the subject, the file and what was expected; skip_bad keeps the rest."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from monai_protoshare.data.brats import BratsDatasetError, load_brats_datalist

from .conftest import (
    case_file,
    csv_rows,
    expect_failure,
    nonfinite_affine,
    record,
    seg_label,
    shifted,
    singular_affine,
    subject,
    truncate,
    with_ndim,
    with_shape,
    with_voxel,
    write_csv,
    write_empty,
    write_not_nifti,
    zeros,
)

COMPONENT = "reader (load_brats_datalist)"

# case -> (damage of case 2's files, damaged file kind, problem pattern)
FILE_CASES = {
    "empty .nii.gz": (lambda r: write_empty(case_file(r, 2, "t1")), "t1", "not a readable NIfTI"),
    "truncated .nii.gz": (lambda r: truncate(case_file(r, 2, "flair")), "flair", "truncated"),
    "non-NIfTI file named .nii.gz": (lambda r: write_not_nifti(case_file(r, 2, "t2")), "t2", "not a readable NIfTI"),
    "2-D volume": (lambda r: with_ndim(case_file(r, 2, "t1ce"), 2), "t1ce", r"expected a 3-D image, got shape \(20, 20\)"),
    "4-D volume": (lambda r: with_ndim(case_file(r, 2, "t1"), 4), "t1", r"expected a 3-D image, got shape \(20, 20, 13, 2\)"),
    "5-D volume": (lambda r: with_ndim(case_file(r, 2, "flair"), 5), "flair", "expected a 3-D image"),
    "NaN voxel": (lambda r: with_voxel(case_file(r, 2, "t2"), np.nan), "t2", "1 NaN/Inf voxel"),
    "Inf voxel": (lambda r: with_voxel(case_file(r, 2, "t1"), np.inf), "t1", "1 NaN/Inf voxel"),
    "all-zero sequence": (lambda r: zeros(case_file(r, 2, "flair")), "flair", "all voxels are 0"),
    "sequences of different shapes": (
        lambda r: with_shape(case_file(r, 2, "t2"), (20, 20, 12)),
        "t2",
        r"shape \(20, 20, 12\) differs from the case's other files' \(20, 20, 13\)",
    ),
    "sequences with different affines": (lambda r: shifted(case_file(r, 2, "t1ce")), "t1ce", "affine differs .* 7 mm"),
    "singular affine": (lambda r: singular_affine(case_file(r, 2, "t1")), "t1", "singular affine"),
    "non-finite affine": (lambda r: nonfinite_affine(case_file(r, 2, "t2")), "t2", "non-finite affine"),
    "missing sequence": (lambda r: case_file(r, 2, "t1ce").unlink(), "t1ce", r"missing file \(.nii.gz or .nii\)"),
    "seg label outside {0,1,2,4}": (lambda r: seg_label(case_file(r, 2, "seg"), 3), "seg", r"labels 3 outside \{0, 1, 2, 4\}"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(FILE_CASES))
def test_a_bad_file_names_subject_file_and_expectation(cohort, case):
    damage, kind, problem = FILE_CASES[case]
    damage(cohort)
    error = expect_failure(case, COMPONENT, BratsDatasetError, problem, load_brats_datalist, cohort, cache=False)
    name = case_file(cohort, 2, kind).name
    [found] = [p for p in error.problems if p.file == name]  # one problem, for the damaged file only
    assert found.subject == subject(2) and {p.subject for p in error.problems} == {subject(2)}
    assert f"{subject(2)} | {name} | " in str(error)


def test_all_zero_segmentation_is_valid(cohort):
    """A case without tumour voxels is not a bad input (the check is for empty image sequences only)."""
    zeros(case_file(cohort, 2, "seg"))
    assert len(load_brats_datalist(cohort, cache=False)) == 3


# case -> (new name_mapping.csv from the old rows, subject, problem pattern)
TABLE_CASES = {
    "name_mapping.csv empty": (lambda rows: "", "(table)", "empty file; expected a header"),
    "name_mapping.csv lacks a column": (
        lambda rows: "\n".join(r.rsplit(",", 1)[0] for r in rows),
        "(table)",
        "missing column.*BraTS_2020_subject_ID; header is Grade",
    ),
    "name_mapping.csv unknown grade": (
        lambda rows: "\n".join([*rows[:2], rows[2].replace("HGG", "GBM").replace("LGG", "GBM"), *rows[3:]]),
        subject(2),
        "line 3: unknown grade 'GBM'; expected one of LGG, HGG",
    ),
    "name_mapping.csv duplicate id": (
        lambda rows: "\n".join([*rows, rows[2]]),
        subject(2),
        r"line 5: duplicate id \(also on line 3\)",
    ),
    "name_mapping.csv non-UTF-8 bytes": (
        lambda rows: "\n".join(rows).replace("HGG", "H\u00c9G", 1).encode("latin-1"),
        "(table)",
        r"not UTF-8 text \(invalid continuation byte at byte \d+\)",
    ),
}


@pytest.mark.parametrize("case", list(TABLE_CASES))
def test_a_bad_name_mapping_names_the_row_or_the_table(cohort, case):
    rewrite, subject_id, problem = TABLE_CASES[case]
    write_csv(cohort, rewrite(csv_rows(cohort)))
    error = expect_failure(case, COMPONENT, BratsDatasetError, problem, load_brats_datalist, cohort, cache=False)
    assert {p.subject for p in error.problems} == {subject_id}
    assert all(p.file == "name_mapping.csv" for p in error.problems)


def test_skip_bad_reports_every_bad_case_and_keeps_every_good_one(cohort, caplog):
    """Batch behaviour of the reader: two damaged cases of three are listed in one warning; the third is kept."""
    truncate(case_file(cohort, 1, "t1ce"))
    with_voxel(case_file(cohort, 3, "flair"), np.nan)
    with caplog.at_level(logging.WARNING, logger="monai_protoshare.data.brats"):
        datalist = load_brats_datalist(cohort, skip_bad=True, cache=False)
    assert [item["subject_id"] for item in datalist] == [subject(2)]
    [warning] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert "Skipping 2 bad case(s)" in warning
    assert f"{subject(1)} | {subject(1)}_t1ce.nii.gz | " in warning and f"{subject(3)} | {subject(3)}_flair" in warning
    record("two bad cases of three, skip_bad=True", COMPONENT, "1 case returned; one warning lists both bad cases")
