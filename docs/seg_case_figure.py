"""Case figure of a trained ProtoSeg fold: one held-out voxel's top prototypes and their source patches (issue 23).

Usage::

    python docs/seg_case_figure.py --fold_dir outputs/seg_cv/proto_seg/fold0 --case BraTS20_Training_007 \
        --out docs/images/seg_case_figure.png [--voxel 30 32 20] [--region 1] [--top_k 3]

``--fold_dir`` is a fold that ``bundles/proto_seg/configs/train.yaml`` trained: its ``run_config.yaml`` (network,
preprocessing, dataset), ``checkpoints/model.pt`` and ``prototypes.json`` (the push). The case is preprocessed as
in evaluation; without ``--voxel`` the voxel is the one of the true whole tumour (or the region's mask) with the
largest logit of ``--region`` (0 TC, 1 WT, 2 ET). See :mod:`monai_protoshare.explain.seg_case_figure`.
"""

from __future__ import annotations

import argparse
import json
import logging
from collections.abc import Sequence
from pathlib import Path

from monai.bundle import ConfigParser

from monai_protoshare.explain.figures import save_figure
from monai_protoshare.explain.seg_case_figure import seg_case_figure
from monai_protoshare.workflows.options import load_network_weights

logger = logging.getLogger("seg_case_figure")


def fold_case_figure(
    fold_dir: str | Path,
    case: str,
    out: str | Path,
    voxel: Sequence[int] | None = None,
    region: int = 1,
    top_k: int = 3,
) -> Path:
    """Write the case figure of ``case`` for the trained fold in ``fold_dir`` to ``out`` (PNG, atomically)."""
    fold_dir = Path(fold_dir)
    files = [fold_dir / "run_config.yaml", fold_dir / "checkpoints" / "model.pt", fold_dir / "prototypes.json"]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{fold_dir} is not a trained proto_seg fold: missing {missing}.")
    parser = ConfigParser()
    parser.read_config(str(files[0]))
    network = parser.get_parsed_content("network_def")
    load_network_weights(network, str(files[1]))
    preprocessing = parser.get_parsed_content("validate#preprocessing")
    items = {str(item["subject_id"]): item for item in parser.get_parsed_content("datalist")}
    if case not in items:
        raise KeyError(f"case '{case}' is not in the dataset of {files[0]}; cases: {sorted(items)[:5]}...")

    def preprocessed(subject: str) -> dict:
        return preprocessing(dict(items[subject]))

    data = preprocessed(case)
    provenance = json.loads(files[2].read_text())["prototypes"]
    figure, explanation, chosen = seg_case_figure(
        network,
        data["image"].as_tensor(),
        provenance,
        lambda subject: preprocessed(subject)["image"].as_tensor(),
        voxel=voxel,
        mask=data["seg"][region].as_tensor() > 0,
        region=region,
        top_k=top_k,
        title=case,
    )
    path = save_figure(figure, out, dpi=120)
    logger.info("voxel %s, prototypes %s: %s", chosen, explanation.prototypes[region].tolist(), path)
    return path


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fold_dir", required=True)
    parser.add_argument("--case", required=True, help="subject id of a held-out case")
    parser.add_argument("--out", default="docs/images/seg_case_figure.png")
    parser.add_argument("--voxel", type=int, nargs=3, default=None, help="i j k on the network-input grid")
    parser.add_argument("--region", type=int, default=1, choices=[0, 1, 2], help="0 TC, 1 WT, 2 ET")
    parser.add_argument("--top_k", type=int, default=3)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    print(fold_case_figure(args.fold_dir, args.case, args.out, args.voxel, args.region, args.top_k))


if __name__ == "__main__":
    main()
