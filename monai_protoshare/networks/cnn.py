"""The CNN model: backbone + add-on + global average pooling + linear (App. F.1); also the warm-up model (D.5)."""

from __future__ import annotations

import torch
from torch import nn

from .architecture import ArchitectureSignature
from .backbone import FeatureBackbone
from .localisation import AddOn

__all__ = ["CNNClassifier", "GAPClassifierHead"]


class GAPClassifierHead(nn.Module):
    """Logits from per-scale add-on features: GAP per scale, a learned convex combination over scales
    (``softmax(scale_logits)``, 1/S each at the start; the authors' code, the paper is silent on how the
    CNN combines scales), then a bias-free linear layer.

    Args:
        embedding_dim: E.
        num_scales: number of add-on feature maps.
        num_classes: C.
    """

    def __init__(self, embedding_dim: int, num_scales: int, num_classes: int = 2) -> None:
        super().__init__()
        self.scale_logits = nn.Parameter(torch.zeros(num_scales))
        self.fc = nn.Linear(embedding_dim, num_classes, bias=False)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Args: features, per scale (B, E, H_s, W_s, D_s). Returns logits (B, C)."""
        pooled = torch.stack([g.mean(dim=(2, 3, 4)) for g in features], dim=1)  # (B, S, E)
        weights = torch.softmax(self.scale_logits, dim=0)
        return self.fc((weights[None, :, None] * pooled).sum(dim=1))


class CNNClassifier(ArchitectureSignature, nn.Module):
    """Encoder–decoder backbone with gated fusion, add-on per scale, GAP and a linear classifier.

    This is the paper's CNN baseline and the warm-up model of every prototype network (App. D.5):
    :meth:`sharing` builds it around a prototype network's own ``backbone`` and ``add_ons`` modules,
    so warm-up trains exactly the weights stage 1 starts from.

    Args:
        backbone: a :class:`FeatureBackbone`.
        add_ons: one :class:`AddOn` per active scale.
        scales: active scales, 1-based.
        num_classes: C.

    Example:
        >>> net = CNNClassifier.build(encoder_layers=(1, 1), encoder_widths=(16, 32), embedding_dim=32)
        >>> net(torch.zeros(2, 4, 32, 32, 24)).shape
        torch.Size([2, 2])
    """

    def __init__(
        self, backbone: FeatureBackbone, add_ons: nn.ModuleList, scales: tuple[int, ...], num_classes: int = 2
    ) -> None:
        super().__init__()
        self.register_architecture({"model": "CNNClassifier", "fusion": backbone.fusion, "scales": list(scales)})
        if len(add_ons) != len(scales):
            raise ValueError(f"one add-on per active scale expected: {len(add_ons)} add-ons for scales {scales}.")
        self.backbone = backbone
        self.add_ons = add_ons
        self.scales = tuple(scales)
        self.num_classes = num_classes
        embedding_dim = add_ons[0].conv2.out_channels
        self.head = GAPClassifierHead(embedding_dim, len(scales), num_classes)

    @classmethod
    def build(
        cls,
        in_channels: int = 4,
        num_classes: int = 2,
        encoder_layers: tuple[int, ...] = (3, 8),
        encoder_widths: tuple[int, ...] = (64, 128),
        encoder_attention: str | None = None,
        fusion: str = "gated",
        scales: tuple[int, ...] = (1, 2, 3),
        embedding_dim: int = 128,
        add_on_activation: str = "relu",
    ) -> CNNClassifier:
        """A stand-alone CNN (the Table-1 baseline)."""
        backbone = FeatureBackbone(in_channels, encoder_layers, encoder_widths, encoder_attention, fusion)
        available = backbone.encoder.num_scales
        if not scales or min(scales) < 1 or max(scales) > available:
            raise ValueError(f"scales must lie within 1..{available}; got {tuple(scales)}.")
        add_ons = nn.ModuleList(AddOn(backbone.out_channels[s - 1], embedding_dim, add_on_activation) for s in scales)
        return cls(backbone, add_ons, tuple(scales), num_classes)

    @classmethod
    def sharing(cls, network: nn.Module) -> nn.Module:
        """The warm-up model of a :class:`PrototypeNetwork`: shares its backbone and add-on modules. A network with
        its own ``warmup_model()`` (FPN-IAIA-BL, whose pyramid mixes the scales) builds that instead."""
        if hasattr(network, "warmup_model"):
            return network.warmup_model()
        return cls(network.backbone, network.add_ons, network.scales, network.num_classes)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder``, ``decoder`` (decoder + fusions), ``add_ons``, ``classifier`` (the GAP head)."""
        return {
            "encoder": list(self.backbone.encoder.parameters()),
            "decoder": self.backbone.decoder_parameters(),
            "add_ons": list(self.add_ons.parameters()),
            "classifier": list(self.head.parameters()),
        }

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Add-on features G_s per active scale, (B, E, H_s, W_s, D_s)."""
        self.backbone.check_input(x)
        fused = self.backbone(x)
        return [add_on(fused[s - 1]) for add_on, s in zip(self.add_ons, self.scales)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for input (B, 4, H, W, D)."""
        return self.head(self.features(x))
