"""An architecture signature stored in the state dict, so weights never load silently into another model.

Some models of the family have identical tensor names and shapes (MProtoNet, XProtoNet and ablation A1
differ only in how the attention maps are computed). Each network registers a ``architecture`` buffer
holding its defining arguments as UTF-8 JSON; loading a state dict whose signature differs fails with a
message naming both.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from torch import nn

__all__ = ["ArchitectureSignature", "architecture_bytes"]


def architecture_bytes(config: dict[str, Any]) -> torch.Tensor:
    """``config`` as sorted JSON in a uint8 tensor."""
    text = json.dumps(config, sort_keys=True, default=list)
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.uint8)


def _decode(tensor: torch.Tensor) -> str:
    return bytes(tensor.tolist()).decode("utf-8", errors="replace")


class ArchitectureSignature(nn.Module):
    """Mixin for top-level networks: ``self.register_architecture(config)`` in ``__init__``; loading checks it."""

    def register_architecture(self, config: dict[str, Any]) -> None:
        self.register_buffer("architecture", architecture_bytes(config), persistent=True)

    def architecture_config(self) -> dict[str, Any]:
        return json.loads(_decode(self.architecture))

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        key = prefix + "architecture"
        if key in state_dict and not torch.equal(state_dict[key].to(self.architecture), self.architecture):
            error_msgs.append(
                f"the weights were saved from another model: {_decode(state_dict[key])}; this network is "
                f"{_decode(self.architecture)}"
            )
            state_dict = {k: v for k, v in state_dict.items() if k != key}
            state_dict[key] = self.architecture  # report the mismatch above, not a size mismatch
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
