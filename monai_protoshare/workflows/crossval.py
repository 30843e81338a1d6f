"""Five-fold cross-validation of bundles and ablations, then the Table-1 report.

``python -m monai_protoshare.workflows.crossval --dataset_dir D --models um_protoshare um_protoshare:C cnn cnn:occlusion``

A model spec is ``<bundle>`` or ``<bundle>:<variant>``, the variant an ablation of ``um_protoshare``
(``A1 A2 B C D E1 E2 E3``; E2 is the bundle's default), ``fine`` for ``um_protoshare``, ``mprotonet`` and
``fpn_iaia_bl`` (the fine-annotation loss, ``configs/ablations/fine.yaml``: uses tumour masks in training), or
``occlusion`` / ``gradcampp`` for the ``cnn`` (re-uses the CNN's checkpoints, evaluates with occlusion or Grad-CAM++
instead of Grad-CAM). Every fold gets a fresh model and its own
folder ``<output_dir>/<run>/fold<k>/``. Finished work is skipped: a fold whose ``checkpoints/model.pt``
exists is not retrained, one with ``metrics.json`` is not re-evaluated, and an interrupted training
resumes from its last epoch. To spread folds over GPUs or nodes, start one runner per fold
(``--folds 3``, with ``CUDA_VISIBLE_DEVICES`` or a scheduler array job) on a shared ``--output_dir``,
then ``python -m monai_protoshare.workflows.table1 --root <output_dir>``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .demo import DEFAULT_BUNDLES_DIR, bundle_workflow
from .options import BundleOptionError, exit_on_option_error
from .run_info import save_run_info
from .table1 import write_table

__all__ = ["ModelSpec", "main", "parse_folds", "parse_model_spec", "run_crossval", "run_fold"]

logger = logging.getLogger(__name__)

UM_ABLATIONS = ("A1", "A2", "B", "C", "D", "E1", "E2", "E3")
#: bundles with ``configs/ablations/fine.yaml`` (the fine-annotation loss of FPN-IAIA-BL, eq. 5)
FINE_BUNDLES = ("um_protoshare", "mprotonet", "fpn_iaia_bl")
#: the CNN's other attribution methods: an evaluation-only config over the CNN's checkpoints
CNN_ATTRIBUTION_VARIANTS = ("occlusion", "gradcampp")


@dataclass(frozen=True)
class ModelSpec:
    """A bundle, its extra config files, the run folder name, whether it trains, and its evaluation-only configs."""

    bundle: str
    extra_configs: tuple[str, ...]
    run: str
    trains: bool = True
    run_of_checkpoints: str | None = None
    eval_configs: tuple[str, ...] = ()


def parse_model_spec(spec: str) -> ModelSpec:
    """``um_protoshare``, ``um_protoshare:C``, ``cnn:occlusion``, ``mprotonet`` … -> :class:`ModelSpec`."""
    bundle, _, variant = spec.partition(":")
    if not variant or (bundle == "um_protoshare" and variant.upper() == "E2"):
        return ModelSpec(bundle, (), bundle)
    if bundle == "um_protoshare" and variant.upper() in UM_ABLATIONS:
        return ModelSpec(bundle, (f"ablations/{variant.upper()}.yaml",), f"um_protoshare_{variant.upper()}")
    if bundle in FINE_BUNDLES and variant == "fine":
        return ModelSpec(bundle, ("ablations/fine.yaml",), f"{bundle}_fine")
    if bundle == "cnn" and variant in CNN_ATTRIBUTION_VARIANTS:
        return ModelSpec("cnn", (), f"cnn_{variant}", False, "cnn", (f"{variant}.yaml",))
    raise ValueError(
        f"unknown model spec {spec!r}: use <bundle>, um_protoshare:<{'|'.join(UM_ABLATIONS)}>, "
        f"<{'|'.join(FINE_BUNDLES)}>:fine or cnn:<{'|'.join(CNN_ATTRIBUTION_VARIANTS)}>."
    )


def run_crossval(
    dataset_dir: str,
    models: Sequence[str],
    folds: Sequence[int] = (0, 1, 2, 3, 4),
    preset: str = "paper",
    output_dir: str = "outputs/cv",
    bundles_dir: str | Path = DEFAULT_BUNDLES_DIR,
) -> Path:
    """Train and evaluate every model spec on every fold; write ``table1.md``/``table1.csv``; return the table."""
    out = Path(output_dir).resolve()
    save_run_info(out, models=list(models), folds=list(folds), preset=preset, dataset_dir=str(dataset_dir))
    specs = [parse_model_spec(m) for m in models]
    for spec in specs:
        bundle_root = Path(bundles_dir) / spec.bundle
        for fold in folds:
            run_fold(spec, bundle_root, dataset_dir, fold, preset, out)
    md, _ = write_table(out)
    logger.info("Table 1 written to %s", md)
    return md


def run_fold(spec: ModelSpec, bundle_root: Path, dataset_dir: str, fold: int, preset: str, out: Path) -> None:
    """Train (unless finished) and evaluate one fold of ``spec`` into ``out/<run>/fold<k>/``; finished work is skipped."""
    checkpoint_run = out / (spec.run_of_checkpoints or spec.run)
    configs = ["train.yaml", f"presets/{preset}.yaml", *spec.extra_configs]
    overrides = {"dataset_dir": str(dataset_dir), "output_dir": str(checkpoint_run), "fold": fold}
    model = checkpoint_run / f"fold{fold}" / "checkpoints" / "model.pt"
    if spec.trains and not model.is_file():
        logger.info("training %s fold %d", spec.run, fold)
        workflow = bundle_workflow(bundle_root, configs, **overrides)
        workflow.run()
        workflow.finalize()
    metrics = out / spec.run / f"fold{fold}" / "metrics.json"
    if metrics.is_file() and metrics.stat().st_mtime >= model.stat().st_mtime:
        logger.info("%s fold %d already evaluated", spec.run, fold)
        return
    logger.info("evaluating %s fold %d", spec.run, fold)
    eval_configs = configs + ["evaluate.yaml", *spec.eval_configs]
    eval_overrides = dict(overrides)
    if spec.run_of_checkpoints:
        eval_overrides["fold_dir"] = str(out / spec.run / f"fold{fold}")
    workflow = bundle_workflow(bundle_root, eval_configs, **eval_overrides)
    workflow.run()
    workflow.finalize()


def parse_folds(text: str) -> list[int]:
    """``0-4``, ``0,2,3`` or ``3``."""
    if "-" in text:
        a, b = text.split("-")
        return list(range(int(a), int(b) + 1))
    return [int(v) for v in text.split(",")]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset_dir", required=True)
    parser.add_argument("--models", nargs="+", default=["um_protoshare"])
    parser.add_argument("--folds", type=parse_folds, default=[0, 1, 2, 3, 4], help="e.g. 0-4, 0,2 or 3")
    parser.add_argument("--preset", default="paper", choices=["paper", "cpu_small"])
    parser.add_argument("--output_dir", default="outputs/cv")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        table = run_crossval(args.dataset_dir, args.models, args.folds, args.preset, args.output_dir)
    except BundleOptionError as err:
        exit_on_option_error(err)
    print(table.read_text())


if __name__ == "__main__":
    main()
