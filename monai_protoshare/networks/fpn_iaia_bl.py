"""FPN-IAIA-BL for 3D grading (Yang et al., seed 003): feature pyramid (eq. 1), class- and level-specific prototypes,
focal cosine similarity (eq. 2-3) and a linear last layer h.

Bottom-up pathway: the project's truncated 3D ResNet (:class:`ResNetEncoder`), its scales as pyramid levels, fine to
coarse: c1 = stem, c2 = layer1, c3 = layer2 (strides 2, 4, 8). Top-down pathway and lateral connections (eq. 1)::

    z_L = Conv1x1(c_L),   z_l = Conv3x3(Up(z_{l+1}) + Conv1x1(c_l)),   l = L-1 ... 1

Choices where the paper is silent (each a constructor argument, so a config value):

- ``upsample_mode="nearest"``: ``Up`` doubles the size by nearest neighbour, as in Lin et al.'s FPN;
- the pyramid width d is ``embedding_dim`` (128 ``paper``, 32 ``cpu_small``; FPN's 256 is a config value away);
  lateral and smoothing convolutions have biases, no BN and no activation, as in FPN;
- ``topk_fraction=0.01``: k of eq. (3) is ⌈1 % · V_l⌉ of level l's voxels (at least 1), ProtoPNet's α of the
  project (the paper's k is a count on 2D maps of 14²-56² pixels);
- prototypes are ordered level-major (s1, s2, s3 as everywhere in the project), then class-major within a
  level; initialised U[0, 1) like the project's prototype bank; h starts at +1 (own class) / −0.5 (other);
- the push (stage B) projects each prototype onto the training voxel feature of its own level and class with the
  highest cosine similarity (:func:`~monai_protoshare.explain.push.push_prototypes`, ProtoPNet's projection).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from monai.utils import look_up_option
from torch import nn

from .backbone import FeatureBackbone
from .cnn import GAPClassifierHead
from .protonet import PrototypeNetwork
from .prototypes import PrototypeBank

__all__ = ["FPNIAIABL", "FeaturePyramid", "PyramidWarmupClassifier", "focal_similarity"]

UPSAMPLE_MODES = ("nearest", "trilinear")


def focal_similarity(voxel_similarities: torch.Tensor, topk_fraction: float) -> torch.Tensor:
    """Eq. (3): mean of the top-k voxel similarities minus the mean over all voxels, k = max(1, ⌈α · V⌉).

    k is computed from the input tensor (not from a Python size), so a traced or ONNX export follows the input size.

    Args:
        voxel_similarities: s_{j,n}, (B, K, H, W, D).
        topk_fraction: α in (0, 1].

    Returns:
        g, (B, K).
    """
    flat = voxel_similarities.flatten(2)
    ones = torch.ones_like(flat[0, 0], dtype=torch.float64)  # (V,)
    k = torch.clamp(torch.ceil(topk_fraction * ones.sum()), min=1.0)
    in_top = (ones.cumsum(0) <= k).to(flat.dtype)  # rank < k
    top_mean = (flat.sort(dim=-1, descending=True).values * in_top).sum(dim=-1) / k.to(flat.dtype)
    return top_mean - flat.mean(dim=-1)


class FeaturePyramid(nn.Module):
    """Top-down pathway with lateral connections, eq. (1): one output level per input level, all ``out_channels``.

    Args:
        in_channels: channels of the bottom-up levels c_1 … c_L, fine to coarse.
        out_channels: d.
        upsample_mode: ``"nearest"`` (FPN) or ``"trilinear"``.

    Example:
        >>> fpn = FeaturePyramid((16, 64, 128), 32)
        >>> c = [torch.zeros(1, 16, 32, 32, 24), torch.zeros(1, 64, 16, 16, 12), torch.zeros(1, 128, 8, 8, 6)]
        >>> [z.shape[1:] for z in fpn(c)]
        [torch.Size([32, 32, 32, 24]), torch.Size([32, 16, 16, 12]), torch.Size([32, 8, 8, 6])]
    """

    def __init__(self, in_channels: Sequence[int], out_channels: int, upsample_mode: str = "nearest") -> None:
        super().__init__()
        self.upsample_mode = look_up_option(upsample_mode, UPSAMPLE_MODES)
        self.laterals = nn.ModuleList(nn.Conv3d(int(c), out_channels, kernel_size=1) for c in in_channels)
        # one 3x3x3 smoothing per level but the coarsest (eq. 1: z_L = Conv1x1(c_L)), in top-down order: smooths[0]
        # makes z_{L-1}, smooths[-1] makes z_1 (TorchScript iterates module lists forwards only)
        self.smooths = nn.ModuleList(
            nn.Conv3d(out_channels, out_channels, kernel_size=3, padding=1) for _ in list(in_channels)[:-1]
        )

    def forward(self, features: list[torch.Tensor]) -> list[torch.Tensor]:
        """Args: c_l, (B, C_l, H_l, W_l, D_l), fine to coarse. Returns z_l, (B, d, H_l, W_l, D_l), fine to coarse."""
        if len(features) != len(self.laterals):
            raise ValueError(f"the pyramid has {len(self.laterals)} levels; got {len(features)} feature maps.")
        lateral: list[torch.Tensor] = []
        for level, conv in enumerate(self.laterals):
            lateral.append(conv(features[level]))
        z = [lateral[-1]]
        level = len(lateral) - 2
        for smooth in self.smooths:
            up = F.interpolate(z[0], size=lateral[level].shape[2:], mode=self.upsample_mode)
            z.insert(0, smooth(up + lateral[level]))
            level -= 1
        return z


class FPNIAIABL(PrototypeNetwork):
    """FPN-IAIA-BL (seed 003, §3): pyramid f, prototype layer g with focal cosine similarity, last layer h.

    It is a :class:`PrototypeNetwork` (class-specific ownership, per-voxel matching: ``mapping="none"``), so the
    trainer's stages, the push, the evaluator and the evidence export treat it like the other prototype models;
    only the feature path (:meth:`scale_outputs`) and the similarity (:meth:`voxel_matching`) are its own. Parameter
    groups: ``encoder`` (bottom-up), ``add_ons`` (the pyramid's lateral and smoothing convolutions),
    ``prototypes``, ``classifier``; ``decoder`` and ``mapping`` are empty.

    Args:
        in_channels: input sequences, 4 = [T1, T1-CE, T2, FLAIR].
        num_classes: C, 2 = [LGG, HGG].
        encoder_layers, encoder_widths, encoder_attention: the truncated 3D ResNet (:class:`ResNetEncoder`).
        prototypes_per_level_class: one row per encoder level (fine to coarse: stem, layer1, layer2), one count per
            class in each row (the paper's configuration S). A level without prototypes gets no pyramid output.
        embedding_dim: d, the pyramid width and the prototype length.
        topk_fraction: k of eq. (3) as a fraction of each level's voxels.
        upsample_mode: ``Up`` of eq. (1).

    Raises:
        ValueError: ``prototypes_per_level_class`` does not fit the encoder's levels or ``num_classes``, has a
            negative count, or leaves a class without prototypes.

    Example:
        >>> net = FPNIAIABL(encoder_layers=(1, 1), encoder_widths=(16, 32), embedding_dim=32)
        >>> out = net.explain(torch.zeros(2, 4, 32, 32, 24))
        >>> out.logits.shape, [a.shape[1:] for a in out.attention]
        (torch.Size([2, 2]), [torch.Size([10, 16, 16, 12]), torch.Size([10, 8, 8, 6]), torch.Size([10, 4, 4, 3])])
    """

    def __init__(
        self,
        in_channels: int = 4,
        num_classes: int = 2,
        encoder_layers: tuple[int, ...] = (3, 8),
        encoder_widths: tuple[int, ...] = (64, 128),
        encoder_attention: str | None = None,
        prototypes_per_level_class: Sequence[Sequence[int]] = ((5, 5), (5, 5), (5, 5)),
        embedding_dim: int = 128,
        topk_fraction: float = 0.01,
        upsample_mode: str = "nearest",
    ) -> None:
        # not PrototypeNetwork's constructor, which builds the add-on/mapping feature path: this one sets the same
        # attributes (those PrototypeNetwork's methods, the push and the evaluator read) for the pyramid instead
        nn.Module.__init__(self)
        backbone = FeatureBackbone(in_channels, encoder_layers, encoder_widths, encoder_attention, fusion="none")
        counts = _check_counts(prototypes_per_level_class, backbone.encoder.num_scales, int(num_classes))
        if not 0.0 < topk_fraction <= 1.0:
            raise ValueError(f"topk_fraction must be in (0, 1]; got {topk_fraction}.")
        self.register_architecture(
            {
                "model": "FPNIAIABL",
                "encoder_attention": encoder_attention,
                "prototypes_per_level_class": [list(row) for row in counts],
                "topk_fraction": float(topk_fraction),
                "upsample_mode": upsample_mode,
            }
        )
        self.in_channels, self.num_classes = int(in_channels), int(num_classes)
        self.ownership, self.mapping, self.online_cam = "class_specific", "none", False
        self.feature_fusions = self.mapping_heads = None
        self.topk_fraction = float(topk_fraction)
        self.backbone = backbone
        self.scales = tuple(level + 1 for level, row in enumerate(counts) if sum(row))
        self.prototypes_per_level_class = tuple(counts[s - 1] for s in self.scales)
        self.prototypes_per_scale = tuple(sum(row) for row in self.prototypes_per_level_class)
        # the pyramid starts at the finest level that has prototypes
        self.add_ons = FeaturePyramid(backbone.out_channels[self.scales[0] - 1 :], embedding_dim, upsample_mode)
        self.prototypes = PrototypeBank(self.prototypes_per_scale, embedding_dim)
        owner = [c for row in self.prototypes_per_level_class for c, n in enumerate(row) for _ in range(n)]
        identity = torch.tensor([[float(k == c) for k in owner] for c in range(self.num_classes)])
        self.register_buffer("prototype_class_identity", identity)  # (C, K_total)
        self.classifier = nn.Linear(identity.shape[1], self.num_classes, bias=False)
        with torch.no_grad():
            self.classifier.weight.copy_(identity - 0.5 * (1.0 - identity))

    def pyramid_levels(self, x: torch.Tensor) -> list[torch.Tensor]:
        """z_l of the levels that hold prototypes (:attr:`scales`), (B, d, H_l, W_l, D_l) each, fine to coarse."""
        self.backbone.check_input(x)
        finest = self.scales[0]
        z = self.add_ons(self.backbone(x)[finest - 1 :])
        levels: list[torch.Tensor] = []
        for s in self.scales:
            levels.append(z[s - finest])
        return levels

    def voxel_matching(self, g: torch.Tensor, i: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Eq. (2)-(3) for active level ``i``.

        Args:
            g: z_l, (B, d, H, W, D).
            i: index into :attr:`scales`.

        Returns:
            focal similarities (B, K_l), descriptors (B, K_l, d) = the feature at each prototype's most similar
            voxel (what the push projects onto), and the cosine maps s_{j,n} (B, K_l, H, W, D).
        """
        voxel_sims = self.prototypes.voxel_similarities(g, i)
        flat = voxel_sims.flatten(2)
        best = flat.argmax(dim=-1, keepdim=True).expand(-1, -1, g.shape[1]).transpose(1, 2)
        descriptors = g.flatten(2).gather(2, best).transpose(1, 2)
        return focal_similarity(voxel_sims, self.topk_fraction), descriptors, voxel_sims

    def scale_outputs(self, x: torch.Tensor, online_cam: bool) -> dict[str, list[torch.Tensor]]:
        """Per level: ``similarities`` = eq. (3) (B, K_l), ``attention`` = cosine maps (B, K_l, H_l, W_l, D_l)
        (eq. 2), ``descriptors`` (B, K_l, d), ``features`` = z_l (B, d, H_l, W_l, D_l); no masks, mapping inputs
        or Online-CAM logits (``online_cam`` is ignored). :meth:`explain` and :meth:`forward` build on this."""
        names = ["similarities", "attention", "masks", "descriptors", "features", "mapping_inputs", "online_cam_logits"]
        parts: dict[str, list[torch.Tensor]] = {name: [] for name in names}
        for i, z in enumerate(self.pyramid_levels(x)):
            sims, descriptors, attention = self.voxel_matching(z, i)
            parts["similarities"].append(sims)
            parts["attention"].append(attention)
            parts["descriptors"].append(descriptors)
            parts["features"].append(z)
        return parts

    def warmup_model(self) -> PyramidWarmupClassifier:
        """The CNN the trainer's warm-up epochs train: this network's encoder and pyramid with a GAP head."""
        return PyramidWarmupClassifier(self)


class PyramidWarmupClassifier(nn.Module):
    """Warm-up model of :class:`FPNIAIABL`: encoder → pyramid → GAP per level → :class:`GAPClassifierHead`.

    It shares the network's ``backbone`` and pyramid modules (as :meth:`CNNClassifier.sharing` does for the other
    models), so the encoder stage A starts from is the one the warm-up trained.

    Args:
        network: the :class:`FPNIAIABL` to share modules with.
    """

    def __init__(self, network: FPNIAIABL) -> None:
        super().__init__()
        self.network = network
        self.head = GAPClassifierHead(network.embedding_dim, len(network.scales), network.num_classes)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """``encoder``, ``decoder`` (empty), ``add_ons`` (the pyramid), ``classifier`` (the GAP head)."""
        return {
            "encoder": list(self.network.backbone.encoder.parameters()),
            "decoder": [],
            "add_ons": list(self.network.add_ons.parameters()),
            "classifier": list(self.head.parameters()),
        }

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, C) for input (B, 4, H, W, D)."""
        return self.head(self.network.pyramid_levels(x))


def _check_counts(counts: Sequence[Sequence[int]], num_levels: int, num_classes: int) -> tuple[tuple[int, ...], ...]:
    field = "prototypes_per_level_class"
    try:
        rows = tuple(tuple(int(n) for n in row) for row in counts)
    except (TypeError, ValueError):
        raise ValueError(
            f"{field} must be a list of rows (one per level) of counts (one per class); got {counts!r}."
        ) from None
    if len(rows) != num_levels:
        raise ValueError(
            f"{field} needs one row per encoder level ({num_levels}: stem, layer1{', layer2' * (num_levels > 2)}, "
            f"fine to coarse); got {len(rows)} rows: {counts!r}."
        )
    for level, row in enumerate(rows):
        if len(row) != num_classes or min(row) < 0:
            raise ValueError(
                f"{field}[{level}] must hold {num_classes} non-negative counts (one per class); got {list(row)}."
            )
    empty = [c for c in range(num_classes) if not sum(row[c] for row in rows)]
    if empty:
        raise ValueError(f"{field} gives class(es) {empty} no prototype; every class needs at least one: {counts!r}.")
    return rows
