"""Feature extraction backbone: encoder, optional decoder and per-scale fusion (paper §2.2, Fig. 3)."""

from __future__ import annotations

import torch
from monai.utils import look_up_option
from torch import nn

from .decoder import UNetStyleDecoder
from .encoder import ResNetEncoder
from .fusion import ConcatFusion, GatedFusion

__all__ = ["FUSIONS", "FeatureBackbone"]

FUSIONS = ("none", "concat", "gated")


class FeatureBackbone(nn.Module):
    """Encoder features f_s, decoder features f̃_s and fused features F_s = B_s(f_s, f̃_s) at every scale.

    Args:
        in_channels: input sequences (4).
        encoder_layers, encoder_widths, encoder_attention: see :class:`ResNetEncoder`.
        fusion: ``"none"`` (encoder only, ablations A-B and the baselines: F_s = f_s), ``"concat"``
            (ablation C) or ``"gated"`` (eq. 11; ablations D-E). Any fusion enables the decoder.

    Example:
        >>> bb = FeatureBackbone(encoder_layers=(1, 1), encoder_widths=(16, 32), fusion="gated")
        >>> [f.shape[1] for f in bb(torch.zeros(1, 4, 32, 32, 24))]
        [16, 64, 128]
    """

    # variable-length tuples, which TorchScript cannot type; forward uses the encoder's attributes
    __jit_unused_properties__ = ["out_channels", "strides"]

    def __init__(
        self,
        in_channels: int = 4,
        encoder_layers: tuple[int, ...] = (3, 8),
        encoder_widths: tuple[int, ...] = (64, 128),
        encoder_attention: str | None = None,
        fusion: str = "gated",
    ) -> None:
        super().__init__()
        self.fusion = look_up_option(fusion, FUSIONS)
        self.encoder = ResNetEncoder(in_channels, encoder_layers, encoder_widths, encoder_attention)
        channels = self.encoder.out_channels
        self.decoder = UNetStyleDecoder(channels) if self.fusion != "none" else None
        fusion_type = {"concat": ConcatFusion, "gated": GatedFusion}.get(self.fusion)
        self.fusions = nn.ModuleList(fusion_type(c) for c in channels) if fusion_type else None

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.encoder.out_channels

    @property
    def strides(self) -> tuple[int, ...]:
        return self.encoder.strides

    def decoder_parameters(self) -> list[nn.Parameter]:
        """Parameters of the decoder (bottleneck and blocks) and the fusion modules: frozen in stage 1."""
        modules = [m for m in (self.decoder, self.fusions) if m is not None]
        return [p for m in modules for p in m.parameters()]

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a ValueError naming what was expected when ``x`` cannot go through the network."""
        in_channels = self.encoder.in_channels
        if x.dim() != 5 or x.shape[1] != in_channels:
            raise ValueError(
                f"input must have shape (B, {in_channels}, H, W, D) with the sequences [T1, T1-CE, T2, FLAIR] "
                f"as channels; got {_format_shape(x.shape)}."
            )
        divisor = self.encoder.strides[-1]
        for n in x.shape[2:]:
            if n % divisor != 0:
                raise ValueError(
                    f"input spatial size {_format_shape(x.shape[2:])} must be a multiple of {divisor} in every "
                    f"dimension (the encoder's coarsest stride), e.g. 128x128x96 (paper) or 64x64x48 (cpu_small)."
                )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Args: x (B, in_channels, H, W, D). Returns F_s for every scale, fine to coarse, (B, C_s, H_s, W_s, D_s)."""
        encoded = self.encoder(x)
        if self.decoder is None or self.fusions is None:
            return encoded
        decoded = self.decoder(encoded)
        return [fuse(encoded[i], decoded[i]) for i, fuse in enumerate(self.fusions)]


def _format_shape(shape: list[int]) -> str:
    """``str(tuple(shape))``, in a form TorchScript compiles: ``(1, 3, 32)``."""
    return "(" + ", ".join([str(n) for n in shape]) + ("," if len(shape) == 1 else "") + ")"
