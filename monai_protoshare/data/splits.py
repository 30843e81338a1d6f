"""Cross-validation folds of DESIGN §3: the same folds as MProtoNet and the reference code.

``RepeatedStratifiedKFold(n_splits=5, n_repeats=1, random_state=0)`` over the subjects in
``name_mapping.csv`` row order, stratified by grade (equal to ``StratifiedKFold(5, shuffle=True,
random_state=0)``). Fold ``k``'s held-out part is the test set of that fold; the rest trains a fresh model.
Each fold is saved as a MONAI datalist JSON, ``{"fold", "n_splits", "seed", "training", "validation"}``,
loadable by ``monai.data.load_decathlon_datalist(path, data_list_key="training", base_dir=...)`` or by
:func:`load_fold_datalist`.

Example:
    >>> from monai_protoshare.data.brats import load_brats_datalist
    >>> from monai_protoshare.data.splits import fold_datalists
    >>> train, test = fold_datalists(load_brats_datalist("cohort"), fold=0)

CLI: ``python -m monai_protoshare.data.splits --dataset_dir D --out DIR [--n_splits 5] [--seed 0] [--relative]``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import load_decathlon_datalist
from sklearn.model_selection import RepeatedStratifiedKFold

from monai_protoshare.io import write_json

__all__ = ["fold_datalists", "load_fold_datalist", "make_folds", "write_fold_datalists"]

_PATH_KEYS = ("image", "seg")


def make_folds(labels: Sequence[int], n_splits: int = 5, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds over subjects in the given (csv row) order.

    Args:
        labels: class label per subject (0 LGG, 1 HGG), in ``name_mapping.csv`` row order.
        n_splits: number of folds.
        seed: ``random_state`` of ``RepeatedStratifiedKFold``.

    Returns:
        ``n_splits`` pairs ``(train_indices, test_indices)`` of sorted int arrays.

    Raises:
        ValueError: when ``labels`` is not 1-D, ``n_splits < 2``, or a class has fewer than ``n_splits`` subjects.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be 1-D (one label per subject), got shape {labels.shape}.")
    if n_splits < 2:
        raise ValueError(f"n_splits must be >= 2, got {n_splits}.")
    classes, counts = np.unique(labels, return_counts=True)
    if counts.size == 0 or counts.min() < n_splits:
        found = ", ".join(f"{c}: {n}" for c, n in zip(classes.tolist(), counts.tolist(), strict=True)) or "none"
        raise ValueError(f"Every class needs at least n_splits={n_splits} subjects for stratified folds; got {found}.")
    splitter = RepeatedStratifiedKFold(n_splits=n_splits, n_repeats=1, random_state=seed)
    return [(train, test) for train, test in splitter.split(np.zeros((labels.size, 1)), labels)]


def fold_datalists(
    datalist: Sequence[dict[str, Any]], fold: int, n_splits: int = 5, seed: int = 0
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Split a datalist (csv row order, items with ``label``) into fold ``fold``'s (training, held-out test).

    Raises:
        ValueError: for a fold outside ``0 .. n_splits - 1`` (or see :func:`make_folds`).
        KeyError: when an item has no ``label``.
    """
    if not (isinstance(fold, (int, np.integer)) and 0 <= fold < n_splits):
        raise ValueError(f"fold must be an integer in 0..{n_splits - 1} (n_splits={n_splits}), got {fold!r}.")
    train, test = make_folds(_labels(datalist), n_splits=n_splits, seed=seed)[fold]
    return [datalist[i] for i in train], [datalist[i] for i in test]


def write_fold_datalists(
    datalist: Sequence[dict[str, Any]],
    out_dir: str | os.PathLike,
    n_splits: int = 5,
    seed: int = 0,
    base_dir: str | os.PathLike | None = None,
) -> list[Path]:
    """Write one MONAI datalist JSON per fold, ``out_dir/fold{k}.json``, atomically.

    Args:
        datalist: items of :func:`~monai_protoshare.data.brats.load_brats_datalist`, in csv row order.
        out_dir: output folder (created).
        n_splits: number of folds.
        seed: fold seed.
        base_dir: when given, ``image`` and ``seg`` paths are written relative to it (pass the same
            ``base_dir`` when loading); otherwise as they are.

    Returns:
        The written paths, fold 0 first.
    """
    folds = make_folds(_labels(datalist), n_splits=n_splits, seed=seed)
    items = [_relative(item, base_dir) for item in datalist] if base_dir is not None else list(datalist)
    out = Path(out_dir)
    return [
        write_json(
            out / f"fold{k}.json",
            {
                "fold": k,
                "n_splits": n_splits,
                "seed": seed,
                "training": [items[i] for i in train],
                "validation": [items[i] for i in test],
            },
        )
        for k, (train, test) in enumerate(folds)
    ]


def load_fold_datalist(
    path: str | os.PathLike, data_list_key: str = "training", base_dir: str | os.PathLike | None = None
) -> list[dict[str, Any]]:
    """Load one fold's list with ``load_decathlon_datalist``, keeping ``subject_id`` an id.

    ``load_decathlon_datalist`` turns any string that names an existing path under ``base_dir`` into that path;
    with ``base_dir`` = the dataset folder this would rewrite ``subject_id`` (its case folder exists).
    """
    datalist = load_decathlon_datalist(path, is_segmentation=False, data_list_key=data_list_key, base_dir=base_dir)
    for item in datalist:
        if "subject_id" in item:
            item["subject_id"] = Path(item["subject_id"]).name
    return datalist


def _labels(datalist: Sequence[dict[str, Any]]) -> list[int]:
    missing = [i for i, item in enumerate(datalist) if "label" not in item]
    if missing:
        raise KeyError(f"datalist items {missing[:5]} have no 'label'; expected 0 (LGG) or 1 (HGG) for each item.")
    return [int(item["label"]) for item in datalist]


def _relative(item: dict[str, Any], base_dir: str | os.PathLike) -> dict[str, Any]:
    out = dict(item)
    for key in _PATH_KEYS:
        if isinstance(out.get(key), list):
            out[key] = [os.path.relpath(p, base_dir) for p in out[key]]
        elif isinstance(out.get(key), str):
            out[key] = os.path.relpath(out[key], base_dir)
    return out


def main(argv: Sequence[str] | None = None) -> list[Path]:
    """Command-line entry point: validate a BraTS folder and write its fold datalists."""
    from monai_protoshare.data.brats import find_dataset_root, load_brats_datalist

    parser = argparse.ArgumentParser(description="Write one MONAI datalist JSON per cross-validation fold.")
    parser.add_argument("--dataset_dir", required=True, help="BraTS-2020 training folder (or the synthetic cohort)")
    parser.add_argument("--out", required=True, help="output folder for fold{k}.json")
    parser.add_argument("--n_splits", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip_bad", action="store_true", help="drop invalid cases with a warning")
    parser.add_argument("--relative", action="store_true", help="write paths relative to the dataset folder")
    args = parser.parse_args(argv)
    datalist = load_brats_datalist(args.dataset_dir, skip_bad=args.skip_bad)
    base_dir = find_dataset_root(args.dataset_dir) if args.relative else None
    paths = write_fold_datalists(datalist, args.out, n_splits=args.n_splits, seed=args.seed, base_dir=base_dir)
    for path in paths:
        print(path)
    return paths


if __name__ == "__main__":
    main()
