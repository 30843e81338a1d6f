"""One configurable prototype network expressing UM-ProtoShare, its ablations and the prototype baselines."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from monai.utils import look_up_option
from torch import nn

from .architecture import ArchitectureSignature
from .backbone import FeatureBackbone
from .fusion import MultiScaleFeatureFusion
from .layers import spatial_logsumexp
from .localisation import MAPPING_MODES, AddOn, MappingHead
from .prototypes import PrototypeBank, masked_descriptors

__all__ = ["OWNERSHIPS", "PrototypeNetwork", "PrototypeOutput"]

OWNERSHIPS = ("shared", "class_specific")


@dataclass
class PrototypeOutput:
    """Everything a forward pass knows, for losses, push, metrics and evidence.

    Per-scale lists follow the network's active scales, fine to coarse (s1, s2, s3); the concatenated
    tensors use the same order everywhere.

    Attributes:
        logits: (B, C), eq. (5)/(18) before the softmax.
        similarities: S(x, P), (B, K_total).
        attention: M_s, (B, K_s, H_s, W_s, D_s): normalised maps (eq. 13) for ``l1_soft``; the mapping
            module's maps for ``plain``/``minmax_soft``; per-voxel cosine similarity maps for ProtoPNet.
        masks: per scale, the maps before spatial normalisation (M¹ of eq. 12, values in [0, 1]); empty
            for ProtoPNet.
        descriptors: H_s, (B, K_s, E) (eq. 14); for ProtoPNet the embedding at each prototype's
            best-matching voxel.
        features: G_s, (B, E, H_s, W_s, D_s), the add-on features.
        mapping_inputs: per scale, the tensor the mapping module reads (F_s, or MAProtoNet's fused
            features); empty for ProtoPNet. The mapping loss recomputes maps from rescaled copies.
        online_cam_logits: per scale (B, C), training-only Online-CAM logits; empty when disabled.
    """

    logits: torch.Tensor
    similarities: torch.Tensor
    attention: list[torch.Tensor] = field(default_factory=list)
    masks: list[torch.Tensor] = field(default_factory=list)
    descriptors: list[torch.Tensor] = field(default_factory=list)
    features: list[torch.Tensor] = field(default_factory=list)
    mapping_inputs: list[torch.Tensor] = field(default_factory=list)
    online_cam_logits: list[torch.Tensor] = field(default_factory=list)


class PrototypeNetwork(ArchitectureSignature, nn.Module):
    """UM-ProtoShare (paper §2.2, App. A) and every prototype model of Table 1 as one configurable network.

    Pipeline per active scale s: backbone F_s → add-on G_s → mapping module M_s → descriptors H_s
    (eq. 14) → cosine similarities S_s to the prototype bank (eq. 15) → one bias-free linear classifier
    over the concatenated S (eq. 5, 18). Configurations of Table 1 are in
    :data:`monai_protoshare.networks.factory.MODEL_CONFIGURATIONS`.

    Args:
        in_channels: input sequences, 4 = [T1, T1-CE, T2, FLAIR].
        num_classes: C, 2 = [LGG, HGG].
        encoder_layers, encoder_widths, encoder_attention: the truncated 3D ResNet (``(3, 8)``,
            ``(64, 128)``: ResNet-152 cut after layer2).
        fusion: ``"none"`` (no decoder), ``"concat"`` or ``"gated"`` (decoder + eq. 11).
        scales: active scales, 1-based, fine to coarse: ``(1, 2, 3)`` or single ``(3,)``.
        prototypes_per_scale: K_s per active scale, e.g. E2 = ``(9, 15, 6)``.
        ownership: ``"shared"`` (class-agnostic, soft coefficients ζ, eq. 7) or ``"class_specific"``
            (prototypes split evenly and in order among the classes; the ownership matrix A of App. B.2
            is the buffer ``prototype_class_identity`` (C, K_total)).
        mapping: ``"none"`` (ProtoPNet), ``"plain"`` (XProtoNet), ``"minmax_soft"`` (MProtoNet),
            ``"l1_soft"`` (UM-ProtoShare, eq. 12-13).
        online_cam: compute the per-scale Online-CAM logits (training only; never in ``logits``).
        embedding_dim: E.
        mapping_hidden_channels: width of the mapping module's hidden layer (default E).
        add_on_activation: ``"relu"`` (paper) or ``"sigmoid"``.
        mapping_feature_fusion: MAProtoNet's fusion of scale s−1 into scale s's mapping input.
        topk_fraction: α of ProtoPNet's top-α average pooling (1 %).
        softmask_weight, softmask_threshold: w and σ of eq. (12).
        mask_prior: initial fraction of voxels each mapping-module map covers (:class:`MappingHead`).
        lse_r: r of the Online-CAM log-sum-exp pooling.

    Example:
        >>> net = PrototypeNetwork(encoder_layers=(1, 1), encoder_widths=(16, 32), embedding_dim=32)
        >>> net(torch.zeros(2, 4, 32, 32, 24)).shape
        torch.Size([2, 2])
        >>> out = net.explain(torch.zeros(2, 4, 32, 32, 24))
        >>> out.similarities.shape, [a.shape[1:] for a in out.attention]
        (torch.Size([2, 30]), [torch.Size([9, 16, 16, 12]), torch.Size([15, 8, 8, 6]), torch.Size([6, 4, 4, 3])])
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        encoder_layers: tuple[int, ...] = (3, 8),
        encoder_widths: tuple[int, ...] = (64, 128),
        encoder_attention: str | None = None,
        fusion: str = "gated",
        scales: tuple[int, ...] = (1, 2, 3),
        prototypes_per_scale: tuple[int, ...] = (9, 15, 6),
        ownership: str = "shared",
        mapping: str = "l1_soft",
        online_cam: bool = True,
        embedding_dim: int = 128,
        mapping_hidden_channels: int | None = None,
        add_on_activation: str = "relu",
        mapping_feature_fusion: bool = False,
        topk_fraction: float = 0.01,
        softmask_weight: float = 10.0,
        softmask_threshold: float = 0.5,
        mask_prior: float = 0.5,
        lse_r: float = 10.0,
    ) -> None:
        super().__init__()
        self.register_architecture(
            {
                "model": "PrototypeNetwork",
                "encoder_attention": encoder_attention,
                "fusion": fusion,
                "scales": list(scales),
                "prototypes_per_scale": list(prototypes_per_scale),
                "ownership": ownership,
                "mapping": mapping,
                "online_cam": bool(online_cam),
                "add_on_activation": add_on_activation,
                "mapping_feature_fusion": bool(mapping_feature_fusion),
                "topk_fraction": float(topk_fraction),
                "softmask": [float(softmask_weight), float(softmask_threshold)],
            }
        )
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.ownership = look_up_option(ownership, OWNERSHIPS)
        self.mapping = look_up_option(mapping, MAPPING_MODES)
        self.backbone = FeatureBackbone(in_channels, encoder_layers, encoder_widths, encoder_attention, fusion)
        self.scales = _check_scales(scales, prototypes_per_scale, self.backbone.encoder.num_scales)
        self.prototypes_per_scale = tuple(int(k) for k in prototypes_per_scale)
        self.online_cam = bool(online_cam) and self.mapping != "none"
        _check_mapping_options(self.mapping, self.scales, mapping_feature_fusion, topk_fraction)
        self.topk_fraction = float(topk_fraction)
        self.lse_r = float(lse_r)
        channels = [self.backbone.out_channels[s - 1] for s in self.scales]
        self.add_ons = nn.ModuleList(AddOn(c, embedding_dim, add_on_activation) for c in channels)
        self.feature_fusions = None
        if mapping_feature_fusion:
            self.feature_fusions = nn.ModuleList(
                MultiScaleFeatureFusion((self.backbone.out_channels[s - 2], self.backbone.out_channels[s - 1]))
                for s in self.scales
            )
            channels = [f.out_channels for f in self.feature_fusions]
        self.mapping_heads = None
        if self.mapping != "none":
            hidden = int(mapping_hidden_channels or embedding_dim)
            self.mapping_heads = nn.ModuleList(
                MappingHead(c, k, hidden, self.mapping, softmask_weight, softmask_threshold, mask_prior=mask_prior)
                for c, k in zip(channels, self.prototypes_per_scale)
            )
        self.prototypes = PrototypeBank(self.prototypes_per_scale, embedding_dim)
        total = self.prototypes.num_prototypes
        self.classifier = nn.Linear(total, self.num_classes, bias=False)
        if self.ownership == "class_specific":
            identity = _class_identity(self.num_classes, self.prototypes_per_scale)
            self.register_buffer("prototype_class_identity", identity)
            # ProtoPNet's last-layer start: +1 for the own class, -0.5 for the others
            with torch.no_grad():
                self.classifier.weight.copy_(identity - 0.5 * (1.0 - identity))

    # ------------------------------------------------------------------ structure
    @property
    def embedding_dim(self) -> int:
        return self.prototypes.vectors[0].shape[1]

    def scale_slices(self) -> list[slice]:
        """Index ranges of each active scale in the concatenated similarity vector."""
        return self.prototypes.scale_slices()

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups the training stages switch on and off (App. B.1, D.5).

        ``encoder``, ``decoder`` (bottleneck, decoder blocks and the fusion modules), ``add_ons``,
        ``mapping`` (mapping modules and MAProtoNet's feature fusion), ``prototypes``, ``classifier``.
        """
        mapping = [] if self.mapping_heads is None else list(self.mapping_heads.parameters())
        return {
            "encoder": list(self.backbone.encoder.parameters()),
            "decoder": self.backbone.decoder_parameters(),
            "add_ons": list(self.add_ons.parameters()),
            "mapping": mapping,
            "prototypes": list(self.prototypes.parameters()),
            "classifier": list(self.classifier.parameters()),
        }

    def mask_shift_parameters(self) -> list[nn.Parameter]:
        """The last BN shift β of every mapping module (K_s values per scale; empty without mapping modules).

        β sets how much of the volume each prototype map covers (:class:`MappingHead` ``mask_prior``); the
        trainer can give these parameters their own learning rate (``mask_shift_lr_factor``).
        """
        return [] if self.mapping_heads is None else [head.bn2.bias for head in self.mapping_heads]

    # ------------------------------------------------------------------ forward
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) for input (B, 4, H, W, D): the tensor bundles, TorchScript and Deploy use."""
        if torch.jit.is_scripting():  # TorchScript cannot build the PrototypeOutput dataclass
            return self.classifier(torch.cat(self.scale_outputs(x, False)["similarities"], dim=1))
        return self.explain(x, online_cam=False).logits

    def explain(self, x: torch.Tensor, online_cam: bool | None = None) -> PrototypeOutput:
        """Full forward pass.

        Args:
            x: (B, in_channels, H, W, D), each spatial size a multiple of the coarsest encoder stride (8).
            online_cam: compute the Online-CAM logits (default: when the network has the head).

        Returns:
            :class:`PrototypeOutput`.
        """
        with_online_cam = self.online_cam if online_cam is None else online_cam and self.online_cam
        parts = self.scale_outputs(x, with_online_cam)
        similarities = torch.cat(parts.pop("similarities"), dim=1)
        return PrototypeOutput(logits=self.classifier(similarities), similarities=similarities, **parts)

    def scale_outputs(self, x: torch.Tensor, online_cam: bool) -> dict[str, list[torch.Tensor]]:
        """The per-scale fields of :class:`PrototypeOutput` and ``similarities``, S_s (B, K_s) per scale.

        Written for TorchScript as well (the scripted :meth:`forward`): module lists are zipped, not indexed.
        """
        self.backbone.check_input(x)
        fused = self.backbone(x)
        fields = ["similarities", "attention", "masks", "descriptors", "features", "mapping_inputs"]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in fields + ["online_cam_logits"]}
        for add_on, scale in zip(self.add_ons, self.scales):
            parts["features"].append(add_on(fused[scale - 1]))
        if self.mapping_heads is None:
            for i, g in enumerate(parts["features"]):
                sims, descriptors, attention = self.voxel_matching(g, i)
                parts["similarities"].append(sims)
                parts["descriptors"].append(descriptors)
                parts["attention"].append(attention)
            return parts
        mapping_inputs = [fused[scale - 1] for scale in self.scales]
        if self.feature_fusions is not None:
            for i, fuse in enumerate(self.feature_fusions):
                mapping_inputs[i] = fuse(fused[self.scales[i] - 2], mapping_inputs[i])
        first = 0  # the scale's first column of the classifier
        for i, head in enumerate(self.mapping_heads):
            hidden = head.hidden(mapping_inputs[i])
            mask, attention = head.maps_from_hidden(hidden)
            descriptors = masked_descriptors(parts["features"][i], attention)
            sims = self.prototypes.similarity(descriptors, i)
            if online_cam:
                columns = self.classifier.weight[:, first : first + sims.shape[1]]
                parts["online_cam_logits"].append(self._online_cam_logits(hidden, head.conv2.weight, columns))
            first += sims.shape[1]
            parts["similarities"].append(sims)
            parts["masks"].append(mask)
            parts["attention"].append(attention)
            parts["descriptors"].append(descriptors)
            parts["mapping_inputs"].append(mapping_inputs[i])
        return parts

    def topk_count(self, num_voxels: int) -> int:
        """Number of voxels in ProtoPNet's top-α average pooling: ⌈α · V⌉ (at least 1)."""
        return max(1, math.ceil(self.topk_fraction * num_voxels))

    def voxel_matching(self, g: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """ProtoPNet (App. F.1): per-voxel cosine similarity, top-α average pooling.

        Returns similarities (B, K), descriptors (B, K, E) = the embedding at each prototype's best voxel,
        and the per-voxel similarity maps (B, K, H, W, D).
        """
        voxel_sims = self.prototypes.voxel_similarities(g, i)
        flat = voxel_sims.flatten(2)
        if not torch.jit.is_scripting() and torch.jit.is_tracing():  # an export: k follows the traced input's V
            k = torch.ceil(torch._shape_as_tensor(flat)[-1].double() * self.topk_fraction).clamp(min=1).long()
            top = flat.topk(k, dim=-1)
        else:
            top = flat.topk(self.topk_count(flat.shape[-1]), dim=-1)
        best = top.indices[..., :1].expand(-1, -1, g.shape[1]).transpose(1, 2)
        descriptors = g.flatten(2).gather(2, best).transpose(1, 2)
        return top.values.mean(dim=-1), descriptors, voxel_sims

    def _online_cam_logits(self, hidden: torch.Tensor, projection: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Online-CAM logits of one scale (MProtoNet): LSE-pool the mapping module's hidden features
        (``(logsumexp(r·A) − log V) / r``), apply its second convolution's weights ``projection``
        (K_s, hidden, 1, 1, 1) and this scale's classifier columns ``columns`` (C, K_s). (B, C)."""
        num_voxels = hidden[0, 0].numel()
        pooled = (spatial_logsumexp(self.lse_r * hidden) - math.log(num_voxels)) / self.lse_r
        per_prototype = pooled @ projection.flatten(1).t()
        return per_prototype @ columns.t()


def _check_scales(scales: tuple[int, ...], prototypes_per_scale: tuple[int, ...], available: int) -> tuple[int, ...]:
    scales = tuple(int(s) for s in scales)
    if not scales or list(scales) != sorted(set(scales)) or min(scales) < 1 or max(scales) > available:
        raise ValueError(
            f"scales must be increasing 1-based scale numbers within 1..{available} (the encoder's scales); "
            f"got {scales}."
        )
    if len(prototypes_per_scale) != len(scales) or min(int(k) for k in prototypes_per_scale) < 1:
        raise ValueError(
            f"prototypes_per_scale must give one positive count per active scale {scales}; "
            f"got {tuple(prototypes_per_scale)}."
        )
    return scales


def _check_mapping_options(mapping: str, scales: tuple[int, ...], feature_fusion: bool, topk_fraction: float) -> None:
    if feature_fusion and (mapping == "none" or min(scales) < 2):
        raise ValueError(
            "mapping_feature_fusion fuses scale s-1 into the mapping input of scale s: it needs a mapping "
            f"module and scales >= 2; got mapping={mapping!r}, scales={scales}."
        )
    if not 0.0 < topk_fraction <= 1.0:
        raise ValueError(f"topk_fraction must be in (0, 1]; got {topk_fraction}.")


def _class_identity(num_classes: int, prototypes_per_scale: tuple[int, ...]) -> torch.Tensor:
    """The ownership matrix A (C, K_total) of App. B.2: the prototypes split evenly and in order among the classes."""
    total = sum(prototypes_per_scale)
    if total % num_classes:
        raise ValueError(
            f"class-specific prototypes are split evenly among {num_classes} classes; "
            f"prototypes_per_scale={prototypes_per_scale} sums to {total}."
        )
    identity = torch.zeros(num_classes, total)
    for c in range(num_classes):
        identity[c, c * total // num_classes : (c + 1) * total // num_classes] = 1.0
    return identity
