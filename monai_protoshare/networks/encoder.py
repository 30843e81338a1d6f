"""Truncated 3D ResNet encoder returning the three feature scales of UM-ProtoShare (App. A.1, Fig. 3)."""

from __future__ import annotations

import torch
from monai.networks.nets.resnet import ResNetBottleneck
from torch import nn

from .quadruplet_attention import QuadrupletAttention

__all__ = ["AttentiveBottleneck", "ResNetEncoder"]


class AttentiveBottleneck(ResNetBottleneck):
    """MONAI's 3D ResNet bottleneck with 3D quadruplet attention after ``bn3`` and before the residual sum.

    This is MAProtoNet's block (Li et al., 2024; ``reference/peers.md`` §3): ``out = ¼ Σ_branches G_k(out)``.
    """

    def __init__(
        self, in_planes: int, planes: int, spatial_dims: int = 3, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__(in_planes, planes, spatial_dims=spatial_dims, stride=stride, downsample=downsample)
        self.attention = QuadrupletAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.attention(self.bn3(self.conv3(out)))
        return self.act(out + residual)


class ResNetEncoder(nn.Module):
    """3D bottleneck ResNet truncated after ``len(layers)`` residual stages, returning every scale.

    With ``layers=(3, 8)`` and ``widths=(64, 128)`` this is a 3D ResNet-152 cut after layer2, as in the
    paper. For a (B, 4, 128, 128, 96) input the scales are

    - s1 = conv1 + BN + ReLU: (B, 64, 64, 64, 48)
    - s2 = maxpool + layer1: (B, 256, 32, 32, 24)
    - s3 = layer2: (B, 512, 16, 16, 12)

    Module and parameter names follow torchvision's ResNet (``conv1``, ``bn1``, ``layer1.0.conv1``,
    ``layer1.0.downsample.0`` …) so that 2D ImageNet weights inflate key by key
    (:func:`monai_protoshare.networks.pretrained.inflate_resnet2d_state_dict`).

    Args:
        in_channels: input sequences, 4 for [T1, T1-CE, T2, FLAIR].
        layers: bottleneck blocks per residual stage; its length (1 or 2) sets where the ResNet is cut.
        widths: bottleneck widths per stage (output channels are 4× these); ``widths[0]`` is also the
            stem's width, as in torchvision.
        attention: ``None`` or ``"quadruplet"`` (MAProtoNet's attentive bottlenecks).

    Example:
        >>> enc = ResNetEncoder(layers=(1, 1), widths=(16, 32))
        >>> [f.shape[1:] for f in enc(torch.zeros(1, 4, 64, 64, 48))]
        [torch.Size([16, 32, 32, 24]), torch.Size([64, 16, 16, 12]), torch.Size([128, 8, 8, 6])]
    """

    def __init__(
        self,
        in_channels: int = 4,
        layers: tuple[int, ...] = (3, 8),
        widths: tuple[int, ...] = (64, 128),
        attention: str | None = None,
    ) -> None:
        super().__init__()
        layers, widths = tuple(int(n) for n in layers), tuple(int(w) for w in widths)
        if not 1 <= len(layers) <= 2 or len(widths) != len(layers) or min(layers + widths) < 1:
            raise ValueError(
                f"encoder layers and widths must be 1 or 2 positive integers each, of equal length "
                f"(e.g. layers=(3, 8), widths=(64, 128)); got layers={layers}, widths={widths}."
            )
        if attention not in (None, "quadruplet"):
            raise ValueError(f"encoder attention must be None or 'quadruplet'; got {attention!r}.")
        self.in_channels = in_channels
        block = AttentiveBottleneck if attention == "quadruplet" else ResNetBottleneck
        self.conv1 = nn.Conv3d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        in_planes = widths[0]
        stages = []
        for stage, (blocks, width) in enumerate(zip(layers, widths)):
            stride = 1 if stage == 0 else 2
            stages.append(_make_stage(block, in_planes, width, blocks, stride))
            in_planes = width * block.expansion
        self.layer1 = stages[0]
        if len(stages) > 1:
            self.layer2 = stages[1]
        self.out_channels: tuple[int, ...] = (widths[0],) + tuple(w * block.expansion for w in widths)
        self.strides: tuple[int, ...] = (2,) + tuple(4 * 2**i for i in range(len(layers)))
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    @property
    def num_scales(self) -> int:
        return len(self.out_channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (B, in_channels, H, W, D). Returns [s1, s2(, s3)], fine to coarse."""
        s1 = self.act(self.bn1(self.conv1(x)))
        features = [s1, self.layer1(self.maxpool(s1))]
        if hasattr(self, "layer2"):  # cut after layer1 otherwise (hasattr: a test TorchScript resolves statically)
            features.append(self.layer2(features[-1]))
        return features


def _make_stage(block: type[ResNetBottleneck], in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
    """One residual stage; the first block projects the shortcut (torchvision 'B' shortcut: conv1x1 + BN)."""
    downsample = None
    if stride != 1 or in_planes != planes * block.expansion:
        downsample = nn.Sequential(
            nn.Conv3d(in_planes, planes * block.expansion, kernel_size=1, stride=stride, bias=False),
            nn.BatchNorm3d(planes * block.expansion),
        )
    modules = [block(in_planes, planes, spatial_dims=3, stride=stride, downsample=downsample)]
    modules += [block(planes * block.expansion, planes, spatial_dims=3) for _ in range(blocks - 1)]
    return nn.Sequential(*modules)
