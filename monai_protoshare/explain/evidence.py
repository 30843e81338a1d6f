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

This module holds the records and the forward passes; the tensor maths is in
:mod:`~monai_protoshare.explain.evidence_maths`, and what reads cases from a datalist (the sharedness reference
set, the prototypes' source slices) in :mod:`~monai_protoshare.explain.evidence_sources`.

Example:
    >>> net = build_network("um_protoshare", encoder_layers=(1, 1), encoder_widths=(4, 8), embedding_dim=8).eval()
    >>> [case] = explain_cases(net, torch.randn(1, 4, 16, 16, 8), ["case1"], top_k=3)
    >>> case.contributions.sum(dim=1).allclose(case.logits, atol=1e-5), case.class_map.shape
    (True, torch.Size([16, 16, 8]))
    >>> case.sequence_drops.shape  # (K_total, 4)
    torch.Size([30, 4])
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ..data.cases import CLASS_NAMES
from ..networks import PrototypeNetwork
from ..networks.modes import evaluating
from .attribution import prototype_class_maps

# The tensor maths (eq. 29-31) lives in evidence_maths; its names stay importable from here, where the
# evidence's callers (tests, notebooks) have always found them.
from .evidence_maths import (
    OVERLAY_THRESHOLD,
    evidence_mass_in_mask,
    most_shared_prototypes,
    overlay_cutoff,
    prototype_contributions,
    prototype_maps,
    prototype_sharedness,
)

__all__ = [
    "OVERLAY_THRESHOLD",
    "CaseEvidence",
    "PrototypeCatalogue",
    "PrototypeSource",
    "check_prototype_network",
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


def check_prototype_network(network: Any) -> PrototypeNetwork:
    """``network`` itself when it is a :class:`~monai_protoshare.networks.PrototypeNetwork`.

    Raises:
        ValueError: naming the type received, for the other model families (no prototype evidence).
    """
    if not isinstance(network, PrototypeNetwork):
        raise ValueError(f"network must be a PrototypeNetwork (prototype evidence); received {type(network).__name__}.")
    return network


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
    device = next(check_prototype_network(network).parameters()).device
    sims, labels = [], []
    with evaluating(network):
        for batch in batches:
            images = torch.as_tensor(batch[image_key])
            sims.append(network.explain(images.to(device), online_cam=False).similarities.float().cpu())
            labels.append(torch.as_tensor(batch[label_key]).reshape(-1).long())
    if not sims:
        raise ValueError("reference set is empty: sharedness needs reference cases of every class.")
    return torch.cat(sims), torch.cat(labels)


def prototype_catalogue(
    network: PrototypeNetwork, sharedness: torch.Tensor | None = None, class_names: Sequence[str] = CLASS_NAMES
) -> PrototypeCatalogue:
    """Collect every prototype's scale, index, class weights, push provenance and sharedness.

    Raises:
        ValueError: when ``sharedness`` or ``class_names`` does not match the network.
    """
    network = check_prototype_network(network)
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
    network = check_prototype_network(network)
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
