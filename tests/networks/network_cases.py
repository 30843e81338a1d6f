"""Preset sizes, model lists and builders shared by the network tests (DESIGN §4, §5)."""

from __future__ import annotations

from typing import Any

import torch

from monai_protoshare.networks import QuadrupletAttention, build_network, model_names

# DESIGN §4 presets as build_network overrides; MAProtoNet's encoder has one residual stage (layer1 cut)
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {"overrides": {}, "single_stage": {"encoder_layers": (3,), "encoder_widths": (64,)}},
    "cpu_small": {
        "overrides": {"encoder_layers": (1, 1), "encoder_widths": (16, 32), "embedding_dim": 32},
        "single_stage": {"encoder_layers": (1,), "encoder_widths": (16,)},
    },
}
INPUT_SIZE = {"paper": (128, 128, 96), "cpu_small": (64, 64, 48)}
# the alias "um_protoshare" is E2's configuration (test_factory checks it); tests that run every model run it once
DISTINCT_MODELS = [n for n in model_names() if n != "um_protoshare"]
PROTOTYPE_MODELS = [n for n in DISTINCT_MODELS if n != "cnn"]
# smallest convenient input every model accepts (a multiple of 8), for tests that need values, not sizes
TINY = (32, 32, 24)


def preset_overrides(name: str, preset: str) -> dict[str, Any]:
    """build_network keyword overrides of ``preset`` for model ``name``."""
    overrides = dict(PRESETS[preset]["overrides"])
    if name == "maprotonet":
        overrides.update(PRESETS[preset]["single_stage"])
    return overrides


def build(name: str, preset: str = "cpu_small", seed: int = 0, **extra: Any) -> torch.nn.Module:
    """A freshly initialised model of ``preset`` size, deterministic for a seed."""
    torch.manual_seed(seed)
    return build_network(name, **{**preset_overrides(name, preset), **extra})


def tiny_input(batch: int = 2, size: tuple[int, int, int] = TINY, seed: int = 0) -> torch.Tensor:
    """(batch, 4, *size) standard-normal input."""
    return torch.randn(batch, 4, *size, generator=torch.Generator().manual_seed(seed))


def fp64_attention_case(seed: int, channels_last: bool) -> tuple[QuadrupletAttention, torch.Tensor]:
    """An fp64 ``QuadrupletAttention(kernel_size=3)`` in training mode and a (2, 6, 5, 4, 7) input.

    The gates' BN scales are drawn in [0.5, 1.5] and shifts in [-0.5, 0.5], so that no gate starts as a constant
    (the spatial gate's scale is zero-initialised); the input is channels-last when asked.
    """
    torch.manual_seed(seed)
    att = QuadrupletAttention(kernel_size=3).double().train()
    with torch.no_grad():
        for gate in (*att.axis_gates, att.spatial_gate):
            gate.bn.weight.uniform_(0.5, 1.5)
            gate.bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(2, 6, 5, 4, 7, dtype=torch.float64)
    return att, x.contiguous(memory_format=torch.channels_last_3d) if channels_last else x
