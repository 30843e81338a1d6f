"""Per-case prototype evidence on the network grid (Fig. 5, Appendix G, eq. 28-31; DESIGN §10): tensors only.

What a radiologist gets for one case, before any file is written
(:mod:`monai_protoshare.explain.evidence_writer` takes it to the patient's native space):

* the **class evidence map** of the explained class (eq. 28, :func:`~.attribution.prototype_class_maps`);
* every prototype's **contribution** to every class logit, ``Δy_c^k = w_cls[c, k] · S_k(x)`` (eq. 31, Fig. 5).
  The classifier is bias-free (eq. 5), so the contributions of one class sum exactly to its logit;
* the **top-k prototypes** (largest contribution to the explained class) and their maps at the input size;
* the **per-sequence contribution** of every prototype match: the similarity drop
  ``S_k(x) − S_k(x with sequence m set to 0)`` for m ∈ [T1, T1-CE, T2, FLAIR] (positive: the sequence supports
  the match). Inputs are z-scored over the brain with background 0, so 0 is "no information" (the same
  removal as the deletion metric, App. D.4). The four ablated copies go through the network in one batched
  forward per case;
* the **sharedness** of each prototype (App. G, eq. 29): for two cases x^LGG, x^HGG the paper defines
  ``φ_k = min(S_k(x^LGG), S_k(x^HGG))``. For a report on one case we use its population analogue over a
  reference set R (e.g. the training fold), computed once per export by :func:`prototype_sharedness`:
  ``φ_k = min_c mean_{x ∈ R, y(x) = c} S_k(x)``. With one reference case per class it is eq. (29) exactly.
  A prototype is shared when every class matches it strongly on average; eq. (30) picks the most shared
  prototype of each scale (:func:`most_shared_prototypes`).

Maps of single prototypes are density-rescaled like the class map (DESIGN §8): each scale's attention map is
multiplied by its voxel count, so 1 means "uniform attention" at every scale.

Example:
    >>> net = build_network("um_protoshare", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8).eval()
    >>> [case] = explain_cases(net, torch.randn(1, 4, 16, 16, 8), ["case1"], top_k=3)
    >>> case.contributions.sum(dim=1).allclose(case.logits, atol=1e-5), case.class_map.shape
    (True, torch.Size([16, 16, 8]))
    >>> case.sequence_drops.shape  # (K_total, 4)
    torch.Size([30, 4])
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from ..data.cases import CLASS_NAMES
from ..networks import PrototypeNetwork, PrototypeOutput
from ..networks.modes import evaluating
from .attribution import prototype_class_maps, upsample_to

__all__ = [
    "OVERLAY_THRESHOLD",
    "CaseEvidence",
    "PrototypeCatalogue",
    "PrototypeSource",
    "collect_prototype_sources",
    "dataset_sharedness",
    "evidence_mass_in_mask",
    "explain_cases",
    "most_shared_prototypes",
    "overlay_cutoff",
    "prototype_catalogue",
    "prototype_contributions",
    "prototype_maps",
    "prototype_sharedness",
    "reference_similarities",
    "sequence_similarity_drops",
]

logger = logging.getLogger(__name__)

#: Relative level of the min-max normalised class evidence kept in the label overlay (AP's rule, DESIGN §8).
OVERLAY_THRESHOLD = 0.5


@dataclass
class CaseEvidence:
    """The evidence of one case on the network grid (H, W, D) = the preprocessed input's grid.

    Attributes:
        subject_id: the case.
        logits: (C,) eq. (5).
        probabilities: (C,) softmax of the logits.
        prediction: argmax class.
        target: the class the maps explain (the prediction unless asked otherwise).
        similarities: S(x, P), (K,) in scale order.
        contributions: Δy, (C, K): ``w_cls[c, k] · S_k`` (eq. 31); ``contributions.sum(1) == logits``.
        sequence_drops: (K, 4) similarity drop of each prototype when each sequence is zeroed.
        class_map: (H, W, D) eq. (28) for class ``target``.
        top_prototypes: global indices of the k prototypes with the largest contribution to ``target``,
            best first.
        scale_prototypes: one global index per active scale, the prototype a Fig.-5 figure shows: the most
            shared one (eq. 30) when a sharedness is known, else the one contributing most to ``target``.
        maps: global index -> (H, W, D) density-rescaled, upsampled attention map, for ``top_prototypes`` and
            ``scale_prototypes``.
        label: ground-truth class when known.
    """

    subject_id: str
    logits: torch.Tensor
    probabilities: torch.Tensor
    prediction: int
    target: int
    similarities: torch.Tensor
    contributions: torch.Tensor
    sequence_drops: torch.Tensor
    class_map: torch.Tensor
    top_prototypes: list[int]
    scale_prototypes: list[int]
    maps: dict[int, torch.Tensor] = field(default_factory=dict)
    label: int | None = None


@dataclass
class PrototypeCatalogue:
    """What is known about every prototype independently of a case (scale order, K entries).

    Attributes:
        scales: 1-based scale number of each prototype (1 fine ... 3 coarse).
        indices: index within its scale.
        class_weights: w_cls, (C, K).
        provenance: per prototype, :meth:`~monai_protoshare.networks.PrototypeBank.provenance` (source subject,
            box in network-input voxels, push similarity, push epoch).
        sharedness: φ, (K,) or ``None`` when no reference set was given.
        class_names: C names.
    """

    scales: list[int]
    indices: list[int]
    class_weights: torch.Tensor
    provenance: list[dict[str, Any]]
    sharedness: torch.Tensor | None = None
    class_names: tuple[str, ...] = CLASS_NAMES


@dataclass
class PrototypeSource:
    """A pushed prototype's source case, for the figures: the axial slice through the centre of its box.

    Attributes:
        subject_id: the source case.
        box: (x0, y0, z0, x1, y1, z1) in network-input voxels, end exclusive.
        slices: (4, H, W) the preprocessed source image at z = the box's centre, all four sequences.
    """

    subject_id: str
    box: tuple[int, ...]
    slices: torch.Tensor


def _check_prototype_network(network: Any) -> PrototypeNetwork:
    if not isinstance(network, PrototypeNetwork):
        raise ValueError(f"network must be a PrototypeNetwork (prototype evidence); received {type(network).__name__}.")
    return network


def prototype_contributions(class_weights: torch.Tensor, similarities: torch.Tensor) -> torch.Tensor:
    """Eq. (31), Fig. 5: ``Δy_c^k(x) = w_cls[c, k] · S_k(x)`` for every class and prototype.

    Args:
        class_weights: w_cls, (C, K).
        similarities: S, (B, K).

    Returns:
        (B, C, K); summed over K it is the logits of the bias-free classifier (eq. 5).

    Raises:
        ValueError: when the prototype counts differ.
    """
    if similarities.ndim != 2 or class_weights.ndim != 2 or similarities.shape[1] != class_weights.shape[1]:
        raise ValueError(
            f"class_weights (C, K) and similarities (B, K) must share K; received {tuple(class_weights.shape)} "
            f"and {tuple(similarities.shape)}."
        )
    return similarities.unsqueeze(1) * class_weights.unsqueeze(0).to(similarities)


@torch.no_grad()
def sequence_similarity_drops(
    network: PrototypeNetwork, image: torch.Tensor, similarities: torch.Tensor
) -> torch.Tensor:
    """Per-sequence contribution of every prototype match: ``S_k(x) − S_k(x with sequence m zeroed)``.

    The ablated copies (one per input channel) go through the network in one batched forward.

    Args:
        network: the prototype network (put it in eval mode: BN must use its running statistics).
        image: one case, (1, M, H, W, D) or (M, H, W, D), M input sequences.
        similarities: S(x) of the unablated case, (K,) or (1, K).

    Returns:
        (K, M): positive where removing the sequence lowers the similarity (the sequence supports the match).
    """
    image = image.reshape(-1, *image.shape[-4:])
    if image.shape[0] != 1:
        raise ValueError(f"image must be one case (1, M, H, W, D); received shape {tuple(image.shape)}.")
    channels = image.shape[1]
    keep = 1.0 - torch.eye(channels, dtype=image.dtype, device=image.device)  # row m zeroes channel m
    ablated = image * keep.view(channels, channels, 1, 1, 1)
    ablated_similarities = network.explain(ablated, online_cam=False).similarities  # (M, K)
    return (similarities.reshape(1, -1).to(ablated_similarities) - ablated_similarities).t()


def prototype_maps(
    network: PrototypeNetwork, output: PrototypeOutput, indices: Sequence[int], size: Sequence[int], case: int = 0
) -> torch.Tensor:
    """Attention maps of chosen prototypes of one case, density-rescaled and upsampled to ``size``.

    Args:
        network: the network that produced ``output``.
        output: its :class:`~monai_protoshare.networks.PrototypeOutput` (attention (B, K_s, h, w, d) per scale).
        indices: global prototype indices (scale order).
        size: (H, W, D), the input grid.
        case: which case of the batch.

    Returns:
        (len(indices), H, W, D): each map times its scale's voxel count (1 = uniform attention, DESIGN §8).
    """
    slices = network.scale_slices()
    maps = []
    for j in indices:
        scale = next(i for i, sl in enumerate(slices) if sl.start <= j < sl.stop)
        attention = output.attention[scale][case, j - slices[scale].start]  # (h, w, d)
        scaled = attention * attention.numel()
        maps.append(upsample_to(scaled[None, None], tuple(size))[0, 0])
    if not maps:
        return output.logits.new_zeros((0, *size))
    return torch.stack(maps)


def prototype_sharedness(similarities: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Population sharedness (App. G, eq. 29): ``φ_k = min_c mean_{n: y_n = c} S_k(x_n)``.

    With one case per class this is the paper's ``min(S_k(x^LGG), S_k(x^HGG))``.

    Args:
        similarities: (N, K) over a reference set.
        labels: (N,) class of each reference case.
        num_classes: C; every class must occur in ``labels``.

    Returns:
        (K,).

    Raises:
        ValueError: when shapes disagree or a class has no reference case.
    """
    labels = torch.as_tensor(labels).reshape(-1).long()
    if similarities.ndim != 2 or similarities.shape[0] != labels.numel():
        raise ValueError(
            f"similarities must be (N, K) with one label per row; received {tuple(similarities.shape)} and "
            f"{labels.numel()} labels."
        )
    missing = [c for c in range(num_classes) if not bool((labels == c).any())]
    if missing:
        raise ValueError(f"sharedness needs reference cases of every class; classes {missing} have none.")
    means = torch.stack([similarities[labels == c].mean(dim=0) for c in range(num_classes)])  # (C, K)
    return means.min(dim=0).values


def most_shared_prototypes(network: PrototypeNetwork, sharedness: torch.Tensor) -> list[int]:
    """Eq. (30): ``k_s* = argmax_k φ_s^k`` for every active scale, as global indices."""
    return [sl.start + int(sharedness[sl].argmax()) for sl in network.scale_slices()]


@torch.no_grad()
def reference_similarities(
    network: PrototypeNetwork,
    batches: Iterable[Mapping[str, Any]],
    image_key: str = "image",
    label_key: str = "label",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities and labels of a reference set, for :func:`prototype_sharedness`.

    Args:
        network: the prototype network.
        batches: dicts with ``image`` (B, 4, H, W, D) and ``label`` (B,), e.g. a DataLoader.
        image_key, label_key: keys of the batches.

    Returns:
        similarities (N, K) and labels (N,), on the CPU.
    """
    device = next(_check_prototype_network(network).parameters()).device
    sims, labels = [], []
    with evaluating(network):
        for batch in batches:
            images = torch.as_tensor(batch[image_key])
            sims.append(network.explain(images.to(device), online_cam=False).similarities.float().cpu())
            labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long())
    if not sims:
        raise ValueError("reference set is empty: sharedness needs reference cases of every class.")
    return torch.cat(sims), torch.cat(labels)


def dataset_sharedness(
    network: PrototypeNetwork,
    datalist: Sequence[Mapping[str, Any]],
    transform,
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


def prototype_catalogue(
    network: PrototypeNetwork, sharedness: torch.Tensor | None = None, class_names: Sequence[str] = CLASS_NAMES
) -> PrototypeCatalogue:
    """Collect every prototype's scale, index, class weights, push provenance and sharedness.

    Raises:
        ValueError: when ``sharedness`` or ``class_names`` does not match the network.
    """
    network = _check_prototype_network(network)
    provenance = network.prototypes.provenance()
    total = len(provenance)
    if sharedness is not None and tuple(sharedness.shape) != (total,):
        raise ValueError(f"sharedness must be ({total},), one value per prototype; received {tuple(sharedness.shape)}.")
    if len(class_names) != network.num_classes:
        raise ValueError(f"class_names must name {network.num_classes} classes; received {list(class_names)}.")
    return PrototypeCatalogue(
        scales=[network.scales[p["scale_index"]] for p in provenance],
        indices=[p["index"] for p in provenance],
        class_weights=network.classifier.weight.detach().float().cpu(),
        provenance=provenance,
        sharedness=None if sharedness is None else sharedness.detach().float().cpu(),
        class_names=tuple(class_names),
    )


@torch.no_grad()
def explain_cases(
    network: PrototypeNetwork,
    images: torch.Tensor,
    subject_ids: Sequence[str],
    target: torch.Tensor | Sequence[int] | None = None,
    top_k: int = 5,
    sharedness: torch.Tensor | None = None,
    labels: Sequence[int | None] | None = None,
) -> list[CaseEvidence]:
    """The evidence of each case of a batch (module docstring): one forward for the batch, plus one batched
    forward of the four sequence-ablated copies per case.

    Args:
        network: a :class:`~monai_protoshare.networks.PrototypeNetwork`; run in eval mode (its mode is restored).
        images: (B, 4, H, W, D) preprocessed inputs.
        subject_ids: B case ids.
        target: (B,) class each case's maps explain; default the predicted class.
        top_k: number of top contributing prototypes (capped at K).
        sharedness: (K,) from :func:`prototype_sharedness`; selects the Fig.-5 prototype per scale (eq. 30).
        labels: B ground-truth classes (or ``None``), only recorded.

    Returns:
        B :class:`CaseEvidence`, on the CPU.

    Raises:
        ValueError: bad ``network``, ``images``, ``subject_ids``, ``target`` or ``top_k``.
    """
    network = _check_prototype_network(network)
    images = torch.as_tensor(images)
    if images.ndim != 5 or images.shape[1] != network.in_channels:
        raise ValueError(f"images must be (B, {network.in_channels}, H, W, D); received shape {tuple(images.shape)}.")
    batch = images.shape[0]
    if len(subject_ids) != batch:
        raise ValueError(f"subject_ids must name the {batch} cases of the batch; received {len(subject_ids)}.")
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1; received {top_k}.")
    total = network.prototypes.num_prototypes
    if sharedness is not None and tuple(sharedness.shape) != (total,):
        raise ValueError(f"sharedness must be ({total},), one value per prototype; received {tuple(sharedness.shape)}.")
    with evaluating(network):
        return _explain(network, images, subject_ids, target, int(top_k), sharedness, labels)


def _explain(
    network: PrototypeNetwork,
    images: torch.Tensor,
    subject_ids: Sequence[str],
    target: torch.Tensor | Sequence[int] | None,
    top_k: int,
    sharedness: torch.Tensor | None,
    labels: Sequence[int | None] | None,
) -> list[CaseEvidence]:
    """:func:`explain_cases` after its checks, in eval mode."""
    batch = images.shape[0]
    device = next(network.parameters()).device
    images = images.to(device)
    size = tuple(images.shape[2:])
    output = network.explain(images, online_cam=False)
    logits = output.logits.float()
    prediction = logits.argmax(dim=1)
    target = prediction if target is None else torch.as_tensor(target, device=device).reshape(-1).long()
    if target.numel() != batch or bool(((target < 0) | (target >= network.num_classes)).any()):
        raise ValueError(
            f"target must hold {batch} classes in 0..{network.num_classes - 1}; received {target.tolist()}."
        )
    contributions = prototype_contributions(network.classifier.weight.float(), output.similarities.float())
    class_maps = prototype_class_maps(network, output, target, size)[:, 0]  # (B, H, W, D)
    k = min(top_k, contributions.shape[2])
    labels = [None] * batch if labels is None else list(labels)
    shared = None if sharedness is None else most_shared_prototypes(network, sharedness.to(device))
    cases = []
    for b in range(batch):
        c = int(target[b])
        own = contributions[b, c]  # (K,)
        top = own.topk(k).indices.tolist()
        per_scale = shared or [sl.start + int(own[sl].argmax()) for sl in network.scale_slices()]
        wanted = list(dict.fromkeys(top + per_scale))
        maps = prototype_maps(network, output, wanted, size, case=b).float().cpu()
        drops = sequence_similarity_drops(network, images[b : b + 1], output.similarities[b])
        cases.append(
            CaseEvidence(
                subject_id=str(subject_ids[b]),
                logits=logits[b].cpu(),
                probabilities=logits[b].softmax(dim=0).cpu(),
                prediction=int(prediction[b]),
                target=c,
                similarities=output.similarities[b].float().cpu(),
                contributions=contributions[b].cpu(),
                sequence_drops=drops.float().cpu(),
                class_map=class_maps[b].float().cpu(),
                top_prototypes=top,
                scale_prototypes=list(per_scale),
                maps=dict(zip(wanted, maps, strict=True)),
                label=None if labels[b] is None else int(labels[b]),
            )
        )
    return cases


def collect_prototype_sources(
    network: PrototypeNetwork,
    datalist: Sequence[Mapping[str, Any]],
    transform,
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
    provenance = _check_prototype_network(network).prototypes.provenance()
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


def evidence_mass_in_mask(evidence_map: torch.Tensor | np.ndarray, mask: torch.Tensor | np.ndarray) -> float:
    """Fraction of the evidence mass inside a mask: ``Σ_{v ∈ mask} max(M_v, 0) / Σ_v max(M_v, 0)``.

    Computed on one grid (e.g. the exported native-space map and the native tumour segmentation), where all
    voxels have the same volume. Negative values (none for eq. 28 maps) carry no mass.

    Args:
        evidence_map: (H, W, D) (or any shape) map.
        mask: same shape; non-zero voxels are inside (e.g. the whole tumour, seg > 0).

    Returns:
        The fraction in [0, 1]; ``nan`` when the map has no positive mass.

    Raises:
        ValueError: when the shapes differ.
    """
    values = torch.as_tensor(np.asarray(evidence_map), dtype=torch.float64).clamp_min(0.0)
    inside = torch.as_tensor(np.asarray(mask)) != 0
    if values.shape != inside.shape:
        raise ValueError(
            f"evidence_map and mask must have the same shape; received {tuple(values.shape)} and {tuple(inside.shape)}."
        )
    total = float(values.sum())
    if total <= 0.0:
        return float("nan")
    return float(values[inside].sum()) / total


def overlay_cutoff(class_map: torch.Tensor, threshold: float = OVERLAY_THRESHOLD) -> float:
    """The class-map value at the relative level ``threshold`` of its range on the network grid.

    The label overlay keeps the voxels ``>=`` this value: the min-max normalisation and 0.5 threshold of the
    activation-precision metric (eq. 25, DESIGN §8).

    Raises:
        ValueError: ``threshold`` outside [0, 1].
    """
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"overlay_threshold must be in [0, 1]; received {threshold}.")
    low, high = float(class_map.min()), float(class_map.max())
    return low + threshold * (high - low)
