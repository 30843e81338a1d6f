"""Sequence identification: one header per rule, the T1/T1-CE split, overrides and clear failures."""

from __future__ import annotations

import pytest

from data_prep.sequence_identification import SeriesInfo, classify_series, identify_sequences

_UIDS = iter(range(1000, 2000))


def series(description: str = "", **tags) -> SeriesInfo:
    """A header with sensible defaults: an original 3-D MR series of 150 slices."""
    number = next(_UIDS)
    defaults = dict(series_number=number, image_type=("ORIGINAL", "PRIMARY", "M", "ND"), n_slices=150)
    return SeriesInfo(series_uid=f"1.2.3.{number}", description=description, **{**defaults, **tags})


T1 = dict(echo_time=2.5, repetition_time=1900.0, inversion_time=900.0)
T2 = dict(echo_time=95.0, repetition_time=5000.0)
FLAIR = dict(echo_time=120.0, repetition_time=9000.0, inversion_time=2500.0)


@pytest.mark.parametrize(
    "header, kind, confidence",
    [
        (series("AX FLAIR", **FLAIR), "flair", 1.0),
        (series("t2_tirm_tra_dark-fluid"), "flair", 0.6),  # name only
        (series("sequence 7", **FLAIR), "flair", 0.4),  # inversion time and TE only
        (series("AX T2 TSE", **T2), "t2", 1.0),
        (series("sequence 8", **T2), "t2", 0.4),  # TE/TR only
        (series("T2_FLAIR_3D"), "flair", 0.6),  # "t2" in a FLAIR name is not T2
        (series("sag MPRAGE", **T1), "t1w", 1.0),  # MPRAGE TI ~900 ms is not FLAIR
        (series("sequence 9", echo_time=10.0, repetition_time=500.0), "t1w", 0.4),  # spin-echo T1 physics
    ],
)
def test_each_rule_identifies_its_sequence_with_a_confidence(header, kind, confidence):
    result = classify_series(header)
    assert result.kind == kind
    assert result.confidence == pytest.approx(confidence)
    assert result.reasons


@pytest.mark.parametrize(
    "header, why",
    [
        (series("3-plane localizer", n_slices=9, image_type=("ORIGINAL", "PRIMARY", "LOCALIZER")), "LOCALIZER"),
        (series("AX T1 MPR cor", image_type=("DERIVED", "SECONDARY", "MPR"), **T1), "DERIVED"),
        (series("AX DWI b1000", echo_time=89.0, repetition_time=6000.0), "dwi"),
        (series("PERFUSION DSC", echo_time=30.0, repetition_time=1500.0), "perfusion"),
        (series("SWI_Images", echo_time=20.0, repetition_time=28.0), "swi"),
        (series("T2* GRE hemo", echo_time=20.0, repetition_time=600.0), "t2*"),
        (series("AX T1", n_slices=5, **T1), "slices"),
        (series("CT head", modality="CT"), "modality"),
    ],
)
def test_localisers_derived_diffusion_perfusion_swi_and_short_series_are_dropped(header, why):
    result = classify_series(header)
    assert result.kind is None
    assert why.lower() in result.reasons[0].lower() and result.reasons[0].startswith("dropped")


@pytest.mark.parametrize(
    "t1_tags, t1ce_tags, expected_reason",
    [
        ({}, {"contrast_agent": "Gadovist"}, "ContrastBolusAgent"),
        ({}, {"description": "AX T1 MPRAGE POST"}, "post-contrast"),
        ({}, {"description": "T1_mprage+C"}, "post-contrast"),
        ({"description": "T1 pre contrast"}, {"description": "T1 contrast"}, "post-contrast"),
    ],
)
def test_t1_and_t1ce_are_told_apart_by_contrast_tag_or_name(t1_tags, t1ce_tags, expected_reason):
    t1 = series(**{"description": "AX T1 MPRAGE", "series_time": 36000.0, **T1, **t1_tags})
    # The post-contrast series is acquired *earlier* here: tag and name must win over acquisition order.
    t1ce = series(**{"description": "AX T1 MPRAGE", "series_time": 30000.0, **T1, **t1ce_tags})
    found = identify_sequences([series("FLAIR", **FLAIR), t1, series("T2", **T2), t1ce])
    assert found["t1"].series is t1 and found["t1ce"].series is t1ce
    assert any(expected_reason in reason for reason in found["t1ce"].reasons)


def test_without_contrast_evidence_the_later_of_two_t1_series_is_t1ce():
    early = series("AX T1 MPRAGE", series_time=36000.0, **T1)
    late = series("AX T1 MPRAGE", series_time=37800.0, **T1)
    found = identify_sequences([late, series("FLAIR", **FLAIR), series("T2", **T2), early])
    assert found["t1"].series is early and found["t1ce"].series is late
    assert found["t1ce"].confidence == pytest.approx(0.5)
    assert "later" in found["t1ce"].reasons[-1] and "10:30:00" in found["t1ce"].reasons[-1]


def test_a_3d_original_series_is_preferred_over_a_2d_one():
    axial_2d = series("AX T2", acquisition_type="2D", n_slices=30, slice_thickness=5.0, **T2)
    cube_3d = series("T2 CUBE", acquisition_type="3D", n_slices=180, slice_thickness=1.0, **T2)
    t1 = series("T1", series_time=1.0, **T1)
    t1ce = series("T1 post", contrast_agent="Gd", series_time=2.0, **T1)
    found = identify_sequences([axial_2d, cube_3d, series("FLAIR", **FLAIR), t1, t1ce])
    assert found["t2"].series is cube_3d
    assert axial_2d.label in found["t2"].reasons[-1]


def test_overrides_win_by_uid_number_or_description():
    t1, t1ce = series("T1 a", **T1), series("T1 b", **T1)
    flair, t2, other = series("FLAIR", **FLAIR), series("T2", **T2), series("weird thing")
    overrides = {"t1": t1.series_uid, "t1ce": t1ce.series_number, "flair": "weird thing"}
    found = identify_sequences([t1, t1ce, flair, t2, other], overrides=overrides)
    assert found["t1"].series is t1 and found["t1ce"].series is t1ce and found["flair"].series is other
    assert found["flair"].confidence == 1.0 and "override" in found["flair"].reasons[0]
    assert found["t2"].series is t2


def test_bad_overrides_raise_key_errors_that_list_the_series():
    study = [series("T1", **T1), series("FLAIR", **FLAIR)]
    with pytest.raises(KeyError, match="matches no series"):
        identify_sequences(study, overrides={"t1": "999999"})
    with pytest.raises(ValueError, match="flair"):
        identify_sequences(study, overrides={"flar": "1"})


def test_a_study_without_flair_fails_naming_the_missing_sequence_and_every_series():
    t2 = series("AX T2", **T2)
    study = [series("T1", series_time=1.0, **T1), series("T1 post", contrast_agent="Gd", series_time=2.0, **T1), t2]
    with pytest.raises(ValueError, match="could not identify FLAIR") as error:
        identify_sequences(study)
    assert t2.series_uid in str(error.value) and "--series flair=" in str(error.value)


def test_a_single_t1_without_contrast_evidence_cannot_be_split():
    study = [series("T1", **T1), series("FLAIR", **FLAIR), series("T2", **T2)]
    with pytest.raises(ValueError, match="could not identify T1CE"):
        identify_sequences(study)
