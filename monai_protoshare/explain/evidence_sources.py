"""Evidence inputs read from a datalist (DESIGN §10): the sharedness reference set and the prototypes' sources.

Both load cases through the preprocessing ``transform`` and skip, with a warning, the ones that cannot be read:
a bad reference case costs its vote (:func:`dataset_sharedness`), a bad source case its patches
(:func:`collect_prototype_sources`), never the export.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from tqdm import tqdm

from ..networks import PrototypeNetwork
from .evidence import PrototypeSource, check_prototype_network, reference_similarities
from .evidence_maths import prototype_sharedness

__all__ = ["collect_prototype_sources", "dataset_sharedness"]

logger = logging.getLogger(__name__)


def dataset_sharedness(
    network: PrototypeNetwork,
    datalist: Sequence[Mapping[str, Any]],
    transform: Callable[[dict[str, Any]], Mapping[str, Any]],
    image_key: str = "image",
    label_key: str = "label",
    progress: bool = True,
) -> torch.Tensor | None:
    """Population sharedness (:func:`prototype_sharedness`) over labelled datalist items, computed once per export.

    Args:
        network: the prototype network.
        datalist: items with ``image`` (paths) and ``label``; unreadable ones are skipped with a warning.
        transform: the preprocessing giving ``image`` (4, H, W, D).
        image_key, label_key: item keys.
        progress: show a tqdm bar.

    Returns:
        (K,), or ``None`` (with a warning) when some class has no readable reference case.
    """

    def batches():
        for item in tqdm(datalist, desc="sharedness reference", leave=False, disable=not progress):
            try:
                image = torch.as_tensor(transform(dict(item))[image_key])
            except Exception as err:  # a bad reference case costs its vote, not the export
                logger.warning("reference case %s skipped (%s: %s)", item.get("subject_id"), type(err).__name__, err)
                continue
            yield {image_key: image[None], label_key: torch.tensor([int(item[label_key])])}

    try:
        similarities, labels = reference_similarities(network, batches(), image_key, label_key)
        return prototype_sharedness(similarities, labels, network.num_classes)
    except ValueError as err:
        logger.warning("sharedness not computed: %s", err)
        return None


def collect_prototype_sources(
    network: PrototypeNetwork,
    datalist: Sequence[Mapping[str, Any]],
    transform: Callable[[dict[str, Any]], Mapping[str, Any]],
    image_key: str = "image",
    id_key: str = "subject_id",
) -> dict[int, PrototypeSource]:
    """Load each pushed prototype's source case once and keep the axial slice through its box's centre.

    Args:
        network: a pushed network (provenance filled by :func:`~monai_protoshare.explain.push.push_prototypes`).
        datalist: items with ``image`` (paths) and ``subject_id``; prototypes whose source is not listed or
            cannot be loaded are skipped with a warning.
        transform: the preprocessing of the push (same spatial size and spacing: boxes are in its voxels).
        image_key, id_key: item keys.

    Returns:
        global prototype index -> :class:`PrototypeSource`, for the prototypes whose source was found.
    """
    provenance = check_prototype_network(network).prototypes.provenance()
    by_id = {str(item[id_key]): item for item in datalist}
    wanted: dict[str, list[dict[str, Any]]] = {}
    for record in provenance:
        if record["source_subject_id"] is not None:
            wanted.setdefault(record["source_subject_id"], []).append(record)
    missing = sorted(set(wanted) - set(by_id))
    if missing:
        logger.warning("prototype source cases not in the datalist (no source patch shown): %s", missing)
    sources = {}
    for subject, records in wanted.items():
        if subject not in by_id:
            continue
        try:
            image = torch.as_tensor(transform(dict(by_id[subject]))[image_key]).float()  # (4, H, W, D)
        except Exception as err:  # a source that cannot be read costs its patches, not the export
            logger.warning("prototype source %s could not be loaded (%s: %s)", subject, type(err).__name__, err)
            continue
        for record in records:
            box = tuple(int(v) for v in record["source_box"])
            z = min(max((box[2] + box[5]) // 2, 0), image.shape[-1] - 1)
            sources[record["global_index"]] = PrototypeSource(subject, box, image[..., z].clone())
    return sources
