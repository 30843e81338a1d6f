"""Identify the T1, T1-CE, T2 and FLAIR series of a clinical MR study from DICOM tags.

Rules (``reference/data_prep.md`` §4), applied per series, each adding evidence with a weight and a
reason a person can read:

* **dropped**: ImageType DERIVED/SECONDARY/LOCALIZER/... (reformats, maps, projections); descriptions of
  localisers, diffusion, perfusion, susceptibility, angiography, spectroscopy, functional series; too few
  slices; non-MR.
* **FLAIR**: the name (``flair``, ``dark fluid``, ``tirm``, ...) or the physics: inversion time >= 1500 ms with
  a long echo time (>= 70 ms).
* **T2**: the name (``t2`` but not FLAIR/T2*) or long TE (>= 70 ms) with long TR (>= 2000 ms), no long TI.
* **T1-weighted**: the name (``t1``, ``mprage``, ``spgr``, ...) or short TE (<= 30 ms) with short TR
  (<= 1000 ms) or an MPRAGE-like TI (300-1300 ms). T1 vs T1-CE: a non-empty ContrastBolusAgent tag or a
  post-contrast name makes T1-CE; without either, the later of two T1-weighted series (SeriesTime) is
  T1-CE.

Name evidence weighs 0.6, physics 0.4: a series matching both has confidence 1.0, by name alone 0.6, by
physics alone 0.4; "later of two T1 series" caps the confidence at 0.5. A manual override (sequence ->
SeriesInstanceUID, SeriesNumber or exact SeriesDescription) wins over the rules with confidence 1.0.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from monai.utils import look_up_option

from monai_protoshare.data.cases import SEQUENCES

__all__ = [
    "Identification",
    "SeriesClassification",
    "SeriesInfo",
    "classify_series",
    "identify_sequences",
]

logger = logging.getLogger(__name__)

NAME_WEIGHT = 0.6
PHYSICS_WEIGHT = 0.4
#: Confidence of a T1/T1-CE split made only from acquisition order.
ORDER_ONLY_CONFIDENCE = 0.5
#: Fewer slices than this is a localiser or a partial acquisition, not a volume.
MIN_SLICES = 16

FLAIR_MIN_TI_MS = 1500.0
LONG_TE_MS = 70.0
LONG_TR_MS = 2000.0
T1_MAX_TE_MS = 30.0
T1_MAX_TR_MS = 1000.0
MPRAGE_TI_RANGE_MS = (300.0, 1300.0)

_DROP_IMAGE_TYPES = {
    "DERIVED",
    "SECONDARY",
    "LOCALIZER",
    "MPR",
    "REFORMATTED",
    "PROJECTION IMAGE",
    "MIP",
    "SUBTRACT",
    "SUB",
    "ADC",
    "TRACEW",
    "TRACE",
    "FA",
    "DIFFUSION",
    "PERFUSION",
    "MOSAIC",
    "CSAPARALLEL",
    "CSA REPORT",
}
_DROP_NAMES = re.compile(
    r"\b(?:loc|localizer|localiser|scout|survey|pilot|3 ?plane|tri ?plane|cal|calib|calibration|asset|sense ref|"
    r"dwi|diff|diffusion|adc|trace|tracew|dti|tensor|ep2d|perf|perfusion|dsc|dce|pwi|swi|swan|susc|t2 ?star|"
    r"hemo|tof|mra|angio|spectro|mrs|csi|asl|pcasl|bold|fmri|rest|sub|subtraction|mip|mpr|reformat)\b|\bt2 ?\*"
)
_FLAIR_NAMES = re.compile(r"\b(flair|dark ?fluid|tirm|t2 ?fl|spc ?ir|cube ?flair)\b")
_T2_NAMES = re.compile(r"\b(t2|t2w|t2 ?weighted)\b")
_T1_NAMES = re.compile(
    r"\b(t1|t1w|t1 ?weighted|t1 ?ce|t1 ?c|t1 ?gd|mprage|mp ?rage|spgr|fspgr|bravo|tfe|vibe|flash|fl3d|t1 ?se|t1 ?tse)\b"
)
_POST_NAMES = re.compile(
    r"\bpost\b|\+ ?c\b|\bc ?\+|\+ ?gd\b|\bgad|\bgd\b|\bgado|\bcontrast\b|\bce\b|\bt1 ?(?:ce|c|gd)\b|\bkm\b|"
    r"\bmdc\b|\benh|\bdotarem|\bgadovist|\bmagnevist"
)
_PRE_NAMES = re.compile(r"\b(?:pre|native|nativ|non ?contrast|without|nc)\b")


def _normalise(text: str) -> str:
    """Lower-case and turn separators into spaces, keeping ``+`` and ``*`` (``T1_MPRAGE+C`` -> ``t1 mprage+c``)."""
    return re.sub(r"[^a-z0-9+*]+", " ", text.lower()).strip()


@dataclass
class SeriesInfo:
    """The identification-relevant tags of one series (times in ms, SeriesTime in seconds after midnight).

    Attributes:
        series_uid: SeriesInstanceUID.
        files: the series' files (slice order not guaranteed).
        n_slices: number of images (frames for enhanced multi-frame files).
    """

    series_uid: str
    series_number: int | None = None
    description: str = ""
    protocol_name: str = ""
    sequence_name: str = ""
    image_type: tuple[str, ...] = ()
    modality: str = "MR"
    echo_time: float | None = None
    repetition_time: float | None = None
    inversion_time: float | None = None
    contrast_agent: str = ""
    series_time: float | None = None
    acquisition_type: str = ""
    patient_id: str = ""
    study_uid: str = ""
    n_slices: int = 0
    slice_thickness: float | None = None
    files: list[Path] = field(default_factory=list)

    @property
    def label(self) -> str:
        """How errors name the series: number, description and UID."""
        return f"series {self.series_number} {self.description!r} ({self.series_uid})"

    def summary(self) -> dict[str, Any]:
        """JSON-ready tags (no file list)."""
        keys = (
            "series_uid",
            "series_number",
            "description",
            "protocol_name",
            "image_type",
            "echo_time",
            "repetition_time",
            "inversion_time",
            "contrast_agent",
            "series_time",
            "acquisition_type",
            "n_slices",
        )
        return {key: getattr(self, key) for key in keys}


@dataclass(frozen=True)
class SeriesClassification:
    """Rule outcome for one series.

    Attributes:
        kind: ``"flair"``, ``"t2"``, ``"t1w"`` (T1 or T1-CE) or ``None`` (dropped or unrecognised).
        confidence: in [0, 1].
        contrast: for ``"t1w"``: ``True`` post-contrast evidence, ``False`` explicit pre-contrast name,
            ``None`` no evidence.
        reasons: the rules that fired, readable.
    """

    kind: str | None
    confidence: float
    contrast: bool | None
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Identification:
    """The series chosen for one sequence, with the confidence and the reasons."""

    sequence: str
    series: SeriesInfo
    confidence: float
    reasons: tuple[str, ...]

    def summary(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"confidence": round(self.confidence, 3), "reasons": list(self.reasons), **self.series.summary()}


def _drop_reason(info: SeriesInfo) -> str | None:
    if info.modality and info.modality != "MR":
        return f"modality {info.modality!r} is not MR"
    dropped_types = sorted(_DROP_IMAGE_TYPES.intersection(t.upper() for t in info.image_type))
    if dropped_types:
        return f"ImageType contains {'/'.join(dropped_types)}"
    name = _normalise(f"{info.description} {info.protocol_name}")
    match = _DROP_NAMES.search(name)
    if match:
        return f"description matches {match.group(0)!r}: not one of the four structural sequences"
    if info.n_slices < MIN_SLICES:
        return f"{info.n_slices} slices < {MIN_SLICES}"
    return None


def classify_series(info: SeriesInfo) -> SeriesClassification:
    """Apply the identification rules to one series.

    Example:
        >>> info = SeriesInfo("1.2", description="AX FLAIR", echo_time=120.0, repetition_time=9000.0,
        ...                   inversion_time=2500.0, n_slices=30)
        >>> classify_series(info).kind, classify_series(info).confidence
        ('flair', 1.0)
    """
    drop = _drop_reason(info)
    if drop:
        return SeriesClassification(None, 0.0, None, (f"dropped: {drop}",))
    name = _normalise(f"{info.description} {info.protocol_name}")
    te, tr, ti = info.echo_time, info.repetition_time, info.inversion_time
    scores: dict[str, float] = {"flair": 0.0, "t2": 0.0, "t1w": 0.0}
    reasons: dict[str, list[str]] = {kind: [] for kind in scores}

    def add(kind: str, weight: float, reason: str) -> None:
        scores[kind] += weight
        reasons[kind].append(reason)

    flair_name = _FLAIR_NAMES.search(name) or re.search(r"(tir2d|spcir)", info.sequence_name.lower())
    if flair_name:
        add("flair", NAME_WEIGHT, f"name matches FLAIR ({flair_name.group(0)!r})")
    if ti is not None and ti >= FLAIR_MIN_TI_MS and te is not None and te >= LONG_TE_MS:
        add("flair", PHYSICS_WEIGHT, f"TI {ti:g} ms >= {FLAIR_MIN_TI_MS:g} and TE {te:g} ms >= {LONG_TE_MS:g}")
    t2_name = None if flair_name else _T2_NAMES.search(name)
    if t2_name:
        add("t2", NAME_WEIGHT, f"name matches T2 ({t2_name.group(0)!r})")
    if (
        te is not None
        and te >= LONG_TE_MS
        and tr is not None
        and tr >= LONG_TR_MS
        and (ti is None or ti < FLAIR_MIN_TI_MS)
    ):
        add("t2", PHYSICS_WEIGHT, f"TE {te:g} ms >= {LONG_TE_MS:g}, TR {tr:g} ms >= {LONG_TR_MS:g}, no long TI")
    t1_name = _T1_NAMES.search(name)
    if t1_name:
        add("t1w", NAME_WEIGHT, f"name matches T1 ({t1_name.group(0)!r})")
    mprage_ti = ti is not None and MPRAGE_TI_RANGE_MS[0] <= ti <= MPRAGE_TI_RANGE_MS[1]
    if te is not None and te <= T1_MAX_TE_MS and ((tr is not None and tr <= T1_MAX_TR_MS) or mprage_ti):
        why = f"TI {ti:g} ms (MPRAGE-like)" if mprage_ti else f"TR {tr:g} ms <= {T1_MAX_TR_MS:g}"
        add("t1w", PHYSICS_WEIGHT, f"TE {te:g} ms <= {T1_MAX_TE_MS:g}, {why}")
    best = max(scores.values())
    winners = [kind for kind, score in scores.items() if score == best]
    if best == 0.0:
        return SeriesClassification(None, 0.0, None, ("no rule matched (name or TE/TR/TI)",))
    if len(winners) > 1:
        tied = " vs ".join(f"{kind}: {'; '.join(reasons[kind])}" for kind in winners)
        return SeriesClassification(None, 0.0, None, (f"ambiguous: {tied}",))
    kind = winners[0]
    found = list(reasons[kind])
    contrast = None
    if kind == "t1w":
        pre, post = _PRE_NAMES.search(name), _POST_NAMES.search(name)
        if info.contrast_agent.strip():
            contrast = True
            found.append(f"ContrastBolusAgent (0018,0010) = {info.contrast_agent.strip()!r}")
        elif pre:  # before the post-contrast names: "pre contrast" contains "contrast"
            contrast = False
            found.append(f"name matches pre-contrast ({pre.group(0)!r})")
        elif post:
            contrast = True
            found.append(f"name matches post-contrast ({post.group(0).strip()!r})")
    return SeriesClassification(kind, min(1.0, best), contrast, tuple(found))


def _preference(info: SeriesInfo, confidence: float) -> tuple:
    """Sort key among candidates of one sequence: confidence, ORIGINAL, 3-D, more slices, thinner slices."""
    original = "ORIGINAL" in (t.upper() for t in info.image_type)
    thickness = info.slice_thickness if info.slice_thickness is not None else float("inf")
    return (confidence, original, info.acquisition_type.upper() == "3D", info.n_slices, -thickness)


def _resolve_override(value: object, series: Sequence[SeriesInfo], sequence: str) -> SeriesInfo:
    text = str(value).strip()
    for key in ("series_uid", "series_number", "description"):
        matches = [info for info in series if str(getattr(info, key)) == text]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise KeyError(
                f"override {sequence}={text!r} matches {len(matches)} series by {key}: "
                f"{[info.label for info in matches]}; give the SeriesInstanceUID"
            )
    raise KeyError(
        f"override {sequence}={text!r} matches no series (SeriesInstanceUID, SeriesNumber or SeriesDescription); "
        f"available: {[info.label for info in series]}"
    )


def identify_sequences(
    series: Sequence[SeriesInfo], overrides: Mapping[str, object] | None = None
) -> dict[str, Identification]:
    """Choose one series for each of T1, T1-CE, T2 and FLAIR.

    Args:
        series: every series of the study.
        overrides: sequence name -> SeriesInstanceUID, SeriesNumber or exact SeriesDescription; takes
            precedence over the rules.

    Returns:
        sequence name (:data:`SEQUENCES`) -> :class:`Identification`.

    Raises:
        KeyError: an override names an unknown sequence or no/several series.
        ValueError: a sequence cannot be found, or T1 and T1-CE cannot be told apart; the message lists
            every series with what the rules concluded.
    """
    chosen: dict[str, Identification] = {}
    for sequence, value in (overrides or {}).items():
        sequence = look_up_option(sequence, SEQUENCES)
        info = _resolve_override(value, series, sequence)
        chosen[sequence] = Identification(sequence, info, 1.0, (f"manual override {sequence}={value!r}",))
    used = {ident.series.series_uid for ident in chosen.values()}
    classified = [(info, classify_series(info)) for info in series if info.series_uid not in used]
    for sequence in ("flair", "t2"):
        if sequence not in chosen:
            pool = [(info, c) for info, c in classified if c.kind == sequence]
            if pool:
                chosen[sequence] = _best(sequence, pool)
    t1w = [(info, c) for info, c in classified if c.kind == "t1w"]
    chosen.update(_split_t1(t1w, {key: chosen[key] for key in ("t1", "t1ce") if key in chosen}))
    missing = [sequence for sequence in SEQUENCES if sequence not in chosen]
    if missing:
        table = "\n".join(f"  {info.label}: {c.kind or '-'} ({'; '.join(c.reasons)})" for info, c in classified)
        raise ValueError(
            f"could not identify {', '.join(s.upper() for s in missing)} among the study's series; "
            f"pass an override (e.g. --series {missing[0]}=<SeriesNumber>). What the rules found:\n{table}"
        )
    for ident in chosen.values():
        if ident.confidence < ORDER_ONLY_CONFIDENCE + 1e-9:
            logger.warning(
                "%s identified with low confidence %.2f as %s: %s",
                ident.series.label,
                ident.confidence,
                ident.sequence,
                "; ".join(ident.reasons),
            )
    return {sequence: chosen[sequence] for sequence in SEQUENCES}


def _best(sequence: str, pool: Sequence[tuple[SeriesInfo, SeriesClassification]]) -> Identification:
    ranked = sorted(pool, key=lambda item: _preference(item[0], item[1].confidence), reverse=True)
    info, classification = ranked[0]
    reasons = list(classification.reasons)
    if len(ranked) > 1:
        others = ", ".join(other.label for other, _ in ranked[1:])
        reasons.append(f"preferred (confidence, ORIGINAL, 3D, slices, thickness) over {others}")
    return Identification(sequence, info, classification.confidence, tuple(reasons))


def _split_t1(
    pool: Sequence[tuple[SeriesInfo, SeriesClassification]], fixed: Mapping[str, Identification]
) -> dict[str, Identification]:
    """Assign T1 and T1-CE among the T1-weighted candidates (``fixed``: those already overridden)."""
    if len(fixed) == 2:
        return {}
    post = [(info, c) for info, c in pool if c.contrast is True]
    pre = [(info, c) for info, c in pool if c.contrast is not True]
    out: dict[str, Identification] = {}
    if post or "t1ce" in fixed:
        if "t1ce" not in fixed:
            out["t1ce"] = _best("t1ce", post)
        if "t1" not in fixed and pre:
            out["t1"] = _best("t1", pre)
        return out
    # No contrast evidence anywhere: the later acquisition is the post-contrast one.
    timed = sorted(
        pre, key=lambda item: (item[0].series_time is None, item[0].series_time or 0.0, item[0].series_number or 0)
    )
    if "t1" in fixed:
        timed = [item for item in timed if (item[0].series_time or 0.0) > (fixed["t1"].series.series_time or 0.0)]
        if timed:
            info, c = timed[-1]
            out["t1ce"] = Identification(
                "t1ce",
                info,
                min(c.confidence, ORDER_ONLY_CONFIDENCE),
                (*c.reasons, "no contrast tag or name: acquired after the overridden T1, so taken as T1-CE"),
            )
        return out
    if len(timed) >= 2:
        (first, c_first), (last, c_last) = timed[0], timed[-1]
        order = f"SeriesTime {_clock(first.series_time)} vs {_clock(last.series_time)}"
        out["t1"] = Identification(
            "t1",
            first,
            min(c_first.confidence, ORDER_ONLY_CONFIDENCE),
            (*c_first.reasons, f"no contrast tag or name: the earlier T1-weighted series ({order}) is taken as T1"),
        )
        out["t1ce"] = Identification(
            "t1ce",
            last,
            min(c_last.confidence, ORDER_ONLY_CONFIDENCE),
            (*c_last.reasons, f"no contrast tag or name: the later T1-weighted series ({order}) is taken as T1-CE"),
        )
    elif len(timed) == 1:
        out["t1"] = _best("t1", timed)
    return out


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    return f"{int(seconds // 3600):02d}:{int(seconds % 3600 // 60):02d}:{int(seconds % 60):02d}"
