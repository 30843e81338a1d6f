"""Make the bundle folder the Deploy and Label apps serve: the bundle's configs with the sizes of the preset the
model was trained with, and the trained weights as ``models/model.pt``.

The apps read ``configs/inference.yaml`` alone (the Deploy SDK accepts no config from ``configs/presets/``), so
the preset's values for the keys ``inference.yaml`` defines (``spatial_size``, ``pixdim``, encoder sizes ...) are
written into the copy. The weights are checked against the network those sizes build before anything is
written, so a preset that does not match the checkpoint fails here, not on the first case.

Usage (any of the project's environments)::

    python deploy/app_bundle.py --weights outputs/demo/fold0/checkpoints/model.pt \\
        --preset cpu_small --out deploy/app_bundles/um_protoshare
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

__all__ = ["main", "make_app_bundle"]

REPO = Path(__file__).resolve().parents[1]
_INFERENCE = Path("configs") / "inference.yaml"


def make_app_bundle(
    out: str | Path,
    weights: str | Path,
    bundle: str | Path = REPO / "bundles" / "um_protoshare",
    preset: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Path:
    """Copy ``bundle`` to ``out`` with the preset's (then ``overrides``') values in ``configs/inference.yaml`` and
    ``weights`` as ``models/model.pt``.

    Args:
        out: the new bundle folder (must not exist).
        weights: a state dict or training checkpoint (its ``network`` entry is taken).
        bundle: the source bundle.
        preset: name of ``configs/presets/<preset>.yaml`` the model was trained with, or ``None``.
        overrides: more ``inference.yaml`` values (keys it already defines).

    Returns:
        ``out``.

    Raises:
        FileExistsError: ``out`` exists.
        FileNotFoundError: the bundle, preset or weights file is missing.
        KeyError: an override names a key that ``inference.yaml`` does not define.
        BundleOptionError: (a ``ValueError``) the weights do not fit the network of these sizes (the message
            names the mismatch).
    """
    import torch

    from monai_protoshare.networks import build_network
    from monai_protoshare.workflows.options import load_network_weights

    out, bundle, weights = Path(out), Path(bundle), Path(weights)
    if out.exists():
        raise FileExistsError(f"--out {out} exists; choose a new folder.")
    if not (bundle / _INFERENCE).is_file():
        raise FileNotFoundError(f"--bundle {bundle} has no {_INFERENCE}.")
    config = yaml.safe_load((bundle / _INFERENCE).read_text(encoding="utf-8"))
    values: dict[str, Any] = {}
    if preset:
        path = bundle / "configs" / "presets" / f"{preset}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (bundle / "configs" / "presets").glob("*.yaml"))
            raise FileNotFoundError(f"--preset {preset!r}: no {path}; presets of this bundle: {known}.")
        preset_values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        values.update({k: v for k, v in preset_values.items() if k in config})
    unknown = sorted(set(overrides or {}) - set(config))
    if unknown:
        raise KeyError(f"overrides {unknown} are not keys of {_INFERENCE}; its keys: {sorted(config)}.")
    values.update(overrides or {})
    config.update(values)

    network = build_network(
        config["model_name"],
        encoder_layers=config["encoder_layers"],
        encoder_widths=config["encoder_widths"],
        embedding_dim=config["embedding_dim"],
    )
    load_network_weights(network, weights, "--weights")  # raises on a mismatch, naming it

    shutil.copytree(bundle, out, ignore=shutil.ignore_patterns("outputs", "__pycache__"))
    (out / _INFERENCE).write_text(
        "# written by deploy/app_bundle.py: the bundle's inference.yaml with "
        f"{'preset ' + preset if preset else 'no preset'} and overrides {sorted(overrides or {})}\n"
        + yaml.safe_dump(config, sort_keys=False),
        encoding="utf-8",
    )
    (out / "models").mkdir(exist_ok=True)
    torch.save(network.state_dict(), out / "models" / "model.pt")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python deploy/app_bundle.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", required=True, help="trained model.pt (state dict or training checkpoint)")
    parser.add_argument("--out", required=True, help="new bundle folder for the apps")
    parser.add_argument("--bundle", default=str(REPO / "bundles" / "um_protoshare"), help="source bundle")
    parser.add_argument("--preset", default=None, help="preset the model was trained with (e.g. cpu_small)")
    args = parser.parse_args(argv)
    try:
        out = make_app_bundle(args.out, args.weights, args.bundle, args.preset)
    except (FileExistsError, FileNotFoundError, KeyError, ValueError) as err:  # ValueError: BundleOptionError
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"app bundle: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
