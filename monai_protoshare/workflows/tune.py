"""Fair tuning: a preset's hyper-parameters chosen on an inner validation split of one fold's training cases.

``python -m monai_protoshare.workflows.tune --dataset_dir D --bundle um_protoshare --preset cpu_small \\
--grid mask_prior=0.1,0.5 lambda_map=0.5,5 --fold 0 --output_dir O``

1. **Split.** Fold ``k``'s (training, held-out) cases are those the bundle itself uses (its ``split`` with
   ``fold``, ``n_folds`` and ``seed`` of ``train.yaml`` + the preset). The training cases are split again,
   stratified by grade: the inner validation part is fold ``--inner_fold`` (default 0) of a stratified
   ``--inner_folds``-fold split (default 4, i.e. a quarter) with seed ``--inner_seed`` (default 0;
   :func:`~monai_protoshare.data.splits.make_folds`); the rest is the inner training part. Fold ``k``'s held-out
   cases are never read: they are in neither part (checked), and only their ids are recorded. The split is kept in
   ``O/split.json``; resuming in ``O`` with another split is refused.
2. **Grid.** Every combination of the ``--grid`` values (``id=v1,v2,...``, a config id of the bundle, ``#`` for
   nested ids; values read as YAML) trains a fresh model on the inner training part and is evaluated on the inner
   validation part, each in ``O/<point>/fold<k>/`` through the cross-validation runner
   (:func:`~monai_protoshare.workflows.crossval.run_fold`), with the point's values and the explicit case lists in
   ``O/<point>/tuning.yaml`` (:func:`split_by_ids` replaces the bundle's ``split``, so this works for every
   grading bundle). Finished points are skipped (a trained model is not retrained, an evaluated one not
   re-evaluated), so an interrupted tuning resumes.
3. **Selection rule** (:func:`choose`): among the points whose inner-validation BAC is within ``--bac_tolerance``
   (default 0.05) of the best BAC, the highest AP; ties by lower IDS, then grid order. BAC first because a model
   that does not grade is useless whatever its maps; AP decides among the models that grade about equally well.
4. **Record.** ``O/tuning.json`` (command, commit, machine, date, bundle, preset, fold, grid, the rule, the split's
   case ids, every point's metrics, the chosen values) and ``O/tuning.md`` (a table of the points); copy the
   chosen values into the preset by hand, naming the record.

The same knobs for every model (issue 20), as config ids of each grading bundle's ``train.yaml`` (at the time of
writing; the command refuses an id that the bundle's config does not have):

* ``um_protoshare``: ``mask_prior`` (initial fraction of voxels each prototype map covers), ``mask_shift_lr_factor``
  (stage-1 learning rate of the maps' BN shift, x ``latent_lr``), ``lambda_map`` (mapping-loss weight), and the
  schedule ``warmup_epochs``, ``latent_epochs``, ``push_interval``, ``classifier_epochs``.
* ``xprotonet``, ``mprotonet``, ``maprotonet``: ``lambda_map`` and the schedule at the top level; their mapping
  modules' prior and BN-shift rate as new arguments of their components, ``network_def#mask_prior`` and
  ``train#trainer#mask_shift_lr_factor`` (the same ``PrototypeNetwork`` and trainer arguments as UM-ProtoShare's).
* ``protopnet``: the schedule (no mapping module: ``lambda_map`` is unused).
* ``cnn``: ``warmup_epochs`` (its only stage).
* ``fpn_iaia_bl``: the schedule, ``lambda_ortho``, ``lambda_fine``.

A grid id is accepted when the bundle's config has it, or when it is a new argument of an existing component
(its parent id holds a ``_target_``).

Give every model the same epochs (the preset's schedule ids) and the same grid size, so that each gets the same
tuning budget.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import re
import sys
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from ..data.splits import make_folds
from ..io import write_json, write_text
from .crossval import ModelSpec, run_fold
from .demo import DEFAULT_BUNDLES_DIR, machine_info
from .options import BundleOptionError, exit_on_option_error
from .run_info import git_sha

__all__ = ["DEFAULT_BAC_TOLERANCE", "choose", "inner_split", "main", "parse_grid", "run_tuning", "split_by_ids"]

logger = logging.getLogger(__name__)

DEFAULT_BAC_TOLERANCE = 0.05
#: grade label of an item of the datalist (0 LGG, 1 HGG)
LABEL_KEY = "label"


def split_by_ids(datalist: Sequence[dict], cases: Mapping[str, Sequence[str]]) -> tuple[list[dict], list[dict]]:
    """(training, held-out) items of ``datalist`` named by ``cases["training"]`` and ``cases["validation"]``
    (``subject_id``s), in datalist order: a bundle's ``split`` from explicit case lists,
    ``split: $monai_protoshare.workflows.tune.split_by_ids(@datalist, @tuning_cases)``.

    Raises:
        BundleOptionError: a missing list, an id that is not in the dataset, or an id in both lists.
    """
    missing = [key for key in ("training", "validation") if key not in cases]
    if missing:
        raise BundleOptionError("tuning_cases", f"needs the lists 'training' and 'validation'; missing {missing}.")
    train, val = set(cases["training"]), set(cases["validation"])
    known = {item["subject_id"] for item in datalist}
    if unknown := sorted((train | val) - known):
        raise BundleOptionError("tuning_cases", f"ids not in the dataset: {unknown[:5]} ({len(unknown)} in all).")
    if both := sorted(train & val):
        raise BundleOptionError("tuning_cases", f"ids in both training and validation: {both[:5]}.")
    return [i for i in datalist if i["subject_id"] in train], [i for i in datalist if i["subject_id"] in val]


def inner_split(
    training: Sequence[dict], inner_folds: int = 4, inner_fold: int = 0, seed: int = 0
) -> tuple[list[str], list[str]]:
    """(inner training ids, inner validation ids) of fold ``k``'s training items: the inner validation part is fold
    ``inner_fold`` of a stratified ``inner_folds``-fold split by grade with ``seed``
    (:func:`~monai_protoshare.data.splits.make_folds`), in the items' order.

    Raises:
        BundleOptionError: ``--inner_fold`` out of range, or a grade with fewer than ``inner_folds`` cases.
    """
    if not 0 <= inner_fold < inner_folds:
        raise BundleOptionError("--inner_fold", f"must be in 0..{inner_folds - 1}; got {inner_fold}.")
    try:
        train_idx, val_idx = make_folds([item[LABEL_KEY] for item in training], inner_folds, seed)[inner_fold]
    except ValueError as err:
        raise BundleOptionError("--inner_folds", f"cannot split the fold's training cases: {err}") from None
    ids = [item["subject_id"] for item in training]
    return [ids[i] for i in train_idx], [ids[i] for i in val_idx]


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``["mask_prior=0.1,0.5", "lambda_map=0.5,5"]`` -> ``{"mask_prior": [0.1, 0.5], "lambda_map": [0.5, 5]}``
    (values read as YAML scalars).

    Raises:
        BundleOptionError: an item without ``=`` or values, or an id given twice.
    """
    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key or not values:
            raise BundleOptionError("--grid", f"expected id=v1,v2,...; got {item!r}.")
        if key in grid:
            raise BundleOptionError("--grid", f"'{key}' given twice.")
        grid[key] = [yaml.safe_load(v) for v in values.split(",")]
    return grid


def _point_name(values: Mapping[str, Any]) -> str:
    """Folder name of a grid point: ``mask_prior-0.1__lambda_map-5`` (``#`` as ``.``, other odd characters ``-``)."""
    return "__".join(re.sub(r"[^A-Za-z0-9_.+-]", "-", f"{k.replace('#', '.')}-{v}") for k, v in values.items())


def choose(points: Sequence[dict], bac_tolerance: float = DEFAULT_BAC_TOLERANCE) -> dict:
    """The selection rule: among the points (``{"metrics": {"bac", "ap", "ids"}}``) whose BAC is at least the best
    BAC minus ``bac_tolerance``, the one with the highest AP; ties by lower IDS, then the first in grid order."""
    if not points:
        raise ValueError("no grid point to choose from.")
    best_bac = max(p["metrics"]["bac"] for p in points)
    eligible = [p for p in points if p["metrics"]["bac"] >= best_bac - bac_tolerance - 1e-12]
    return max(eligible, key=lambda p: (p["metrics"]["ap"], -(p["metrics"].get("ids") or 0.0)))


def _known_id(parser, key: str) -> bool:
    """``key`` is a config id, or a new argument of a component (its parent id holds a ``_target_``)."""
    parent, _, _ = key.rpartition("#")
    return key in parser or (bool(parent) and parent in parser and "_target_" in (parser[parent] or {}))


def _bundle_split(bundle_root: Path, configs: Sequence[str], dataset_dir: str, fold: int) -> dict:
    """Fold ``fold``'s split as the bundle computes it, with its ``n_folds`` and ``seed``."""
    from monai.bundle import ConfigParser

    from .options import raise_option_error

    parser = ConfigParser()
    parser.read_config([str(bundle_root / "configs" / c) for c in configs])
    parser["dataset_dir"], parser["fold"] = str(dataset_dir), fold
    with raise_option_error():
        training, held_out = parser.get_parsed_content("split")
    return {"parser": parser, "training": training, "held_out": held_out}


def run_tuning(
    dataset_dir: str,
    bundle: str,
    grid: Mapping[str, Sequence[Any]],
    fold: int = 0,
    preset: str = "cpu_small",
    output_dir: str = "outputs/tune",
    inner_folds: int = 4,
    inner_fold: int = 0,
    inner_seed: int = 0,
    bac_tolerance: float = DEFAULT_BAC_TOLERANCE,
    bundles_dir: str | Path = DEFAULT_BUNDLES_DIR,
) -> dict:
    """Train and evaluate every grid point on fold ``fold``'s inner split; write and return ``tuning.json``."""
    bundle_root = Path(bundles_dir) / bundle
    configs = ["train.yaml", f"presets/{preset}.yaml"]
    for c in configs:
        if not (bundle_root / "configs" / c).is_file():
            raise BundleOptionError("--bundle/--preset", f"'{bundle_root / 'configs' / c}' not found.")
    outer = _bundle_split(bundle_root, configs, dataset_dir, fold)
    if unknown := [key for key in grid if not _known_id(outer["parser"], key)]:
        raise BundleOptionError(
            "--grid", f"{unknown} not config ids of {bundle} (train.yaml + {preset}); see the knobs in tune.py."
        )
    out = Path(output_dir).resolve()
    split = _record_split(out, outer, fold, inner_folds, inner_fold, inner_seed)
    points = [
        _run_point(values, split["inner"], bundle_root, dataset_dir, fold, preset, out) for values in _grid_points(grid)
    ]
    chosen = choose(points, bac_tolerance)
    record = {
        "command": "python -m monai_protoshare.workflows.tune " + " ".join(sys.argv[1:]),
        "commit": git_sha(),
        "machine": machine_info(),
        "date_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "bundle": bundle,
        "preset": preset,
        "dataset_dir": str(dataset_dir),
        "fold": fold,
        "grid": {k: list(v) for k, v in grid.items()},
        "selection_rule": f"highest inner-validation AP among the points with BAC >= best BAC - {bac_tolerance}; "
        "ties: lower IDS, then grid order",
        "split": split,
        "points": points,
        "chosen": {"name": chosen["name"], "values": chosen["values"]},
    }
    write_json(out / "tuning.json", record)
    write_text(out / "tuning.md", render_markdown(record))
    return record


def _record_split(out: Path, outer: dict, fold: int, inner_folds: int, inner_fold: int, inner_seed: int) -> dict:
    """The outer fold's held-out ids and the inner (training, validation) ids, kept in ``out/split.json``; a
    tuning folder holding another split is refused."""
    parser = outer["parser"]
    train_ids, val_ids = inner_split(outer["training"], inner_folds, inner_fold, inner_seed)
    held_out_ids = [item["subject_id"] for item in outer["held_out"]]
    if leaked := set(held_out_ids) & (set(train_ids) | set(val_ids)):
        raise RuntimeError(f"held-out cases in the inner split: {sorted(leaked)}")  # cannot happen: fold_split
    split = {
        "outer": {"fold": fold, "n_folds": parser["n_folds"], "seed": parser["seed"], "held_out_ids": held_out_ids},
        "inner": {"inner_folds": inner_folds, "inner_fold": inner_fold, "seed": inner_seed,
                  "training": train_ids, "validation": val_ids},
    }  # fmt: skip
    recorded = out / "split.json"
    if recorded.is_file() and json.loads(recorded.read_text()) != split:
        raise BundleOptionError(
            "--output_dir", f"'{out}' holds a tuning on another split ({recorded}); use a new folder."
        )
    write_json(recorded, split)
    return split


def _grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict]:
    """Every combination of the grid's values, in grid order; refused when two share a folder name."""
    combinations = [dict(zip(grid, c, strict=True)) for c in itertools.product(*grid.values())]
    names = [_point_name(values) for values in combinations]
    if len(set(names)) != len(names):
        raise BundleOptionError("--grid", f"two grid points share a folder name: {names}.")
    return combinations


def _run_point(
    values: dict, inner: dict, bundle_root: Path, dataset_dir: str, fold: int, preset: str, out: Path
) -> dict:
    """Train (unless finished) and evaluate one grid point on the inner split; its name, values and metrics."""
    name = _point_name(values)
    config = out / name / "tuning.yaml"
    cases = {"training": inner["training"], "validation": inner["validation"]}
    split = "$monai_protoshare.workflows.tune.split_by_ids(@datalist, @tuning_cases)"
    write_text(config, yaml.safe_dump({**values, "tuning_cases": cases, "split": split}, sort_keys=False))
    run_fold(ModelSpec(bundle_root.name, (str(config),), name), bundle_root, dataset_dir, fold, preset, out)
    metrics = json.loads((out / name / f"fold{fold}" / "metrics.json").read_text())
    keys = ("bac", "ap", "ids", "ids_peer", "ece", "n", "ap_by_class_map")
    return {"name": name, "values": values, "metrics": {k: metrics.get(k) for k in keys}}


def render_markdown(record: dict) -> str:
    """``tuning.md``: the setting, the rule and one row per grid point (the chosen one in bold)."""
    keys = list(record["grid"])
    inner = record["split"]["inner"]
    lines = [
        f"# Tuning of {record['bundle']} ({record['preset']}), fold {record['fold']}",
        "",
        f"Inner split of fold {record['fold']}'s training cases: {len(inner['training'])} training, "
        f"{len(inner['validation'])} validation (stratified, inner fold {inner['inner_fold']} of "
        f"{inner['inner_folds']}, seed {inner['seed']}); the fold's {len(record['split']['outer']['held_out_ids'])} "
        "held-out cases are not used.",
        f"Rule: {record['selection_rule']}.",
        f"Command: `{record['command']}` (commit {record['commit']}, {record['date_utc']}).",
        "",
        "| " + " | ".join([*keys, "BAC", "AP", "IDS (%)"]) + " |",
        "|" + "---|" * (len(keys) + 3),
    ]
    for point in record["points"]:
        m = point["metrics"]
        cells = [str(point["values"][k]) for k in keys]
        cells += [f"{m['bac']:.3f}", f"{m['ap']:.3f}", "" if m.get("ids") is None else f"{m['ids']:.2f}"]
        if point["name"] == record["chosen"]["name"]:
            cells = [f"**{c}**" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    chosen = ", ".join(f"`{k}: {v}`" for k, v in record["chosen"]["values"].items())
    return "\n".join([*lines, "", f"Chosen: {chosen}."]) + "\n"


def main(argv: Sequence[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--bundle", default="um_protoshare")
    parser.add_argument("--preset", default="cpu_small")
    parser.add_argument("--grid", nargs="+", required=True, help="id=v1,v2,... (a config id of the bundle)")
    parser.add_argument("--fold", type=int, default=0)
    parser.add_argument("--output_dir", default="outputs/tune")
    parser.add_argument("--inner_folds", type=int, default=4, help="1/inner_folds of the training cases validate")
    parser.add_argument("--inner_fold", type=int, default=0)
    parser.add_argument("--inner_seed", type=int, default=0)
    parser.add_argument("--bac_tolerance", type=float, default=DEFAULT_BAC_TOLERANCE)
    parser.add_argument("--bundles_dir", default=str(DEFAULT_BUNDLES_DIR), help="folder of the bundles")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        record = run_tuning(
            args.dataset_dir,
            args.bundle,
            parse_grid(args.grid),
            args.fold,
            args.preset,
            args.output_dir,
            args.inner_folds,
            args.inner_fold,
            args.inner_seed,
            args.bac_tolerance,
            args.bundles_dir,
        )
    except BundleOptionError as err:
        exit_on_option_error(err)
    print(render_markdown(record))
    return record


if __name__ == "__main__":
    main()
