"""Shared multi-scale prototype bank (eq. 15), descriptors (eq. 14), cosine similarity, push provenance."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .layers import spatial_contraction

__all__ = ["PROVENANCE_ID_BYTES", "PrototypeBank", "masked_descriptors"]

# Subject ids of pushed prototypes are stored as fixed-length UTF-8 byte rows, so provenance lives in the
# state dict and loads with ``torch.load(weights_only=True)``.
PROVENANCE_ID_BYTES = 64


def masked_descriptors(features: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
    """Eq. (14): ``H^k = (1 / (H W D)) Σ_voxels G ⊙ M^k``.

    Args:
        features: G_s, (B, E, H, W, D).
        attention: M_s, (B, K, H, W, D).

    Returns:
        Descriptors (B, K, E).
    """
    num_voxels = features[0, 0].numel()
    return spatial_contraction(attention, features) / num_voxels


class PrototypeBank(nn.Module):
    """Learnable prototypes p_s^k ∈ R^E per scale (eq. 15), initialised U[0, 1), and their provenance.

    Provenance buffers (one row per prototype, in scale order) are filled by the push (eq. 20):
    ``source_id`` (K_total, 64) uint8 (the subject id, UTF-8, zero-padded), ``source_box`` (K_total, 6)
    int64 (voxel box ``x0, y0, z0, x1, y1, z1`` in network-input space, end exclusive; −1 before a push),
    ``source_similarity`` (K_total,) and ``push_epoch`` (K_total,) int64 (−1 before a push).

    Args:
        prototypes_per_scale: K_s for each active scale, e.g. (9, 15, 6).
        embedding_dim: E.

    Example:
        >>> bank = PrototypeBank((2, 3), embedding_dim=4)
        >>> bank.similarity(torch.rand(5, 3, 4), scale=1).shape
        torch.Size([5, 3])
    """

    __jit_unused_properties__ = ["num_prototypes"]  # TorchScript cannot sum a tuple

    def __init__(self, prototypes_per_scale: tuple[int, ...], embedding_dim: int) -> None:
        super().__init__()
        self.prototypes_per_scale = tuple(int(k) for k in prototypes_per_scale)
        self.vectors = nn.ParameterList(nn.Parameter(torch.rand(k, embedding_dim)) for k in self.prototypes_per_scale)
        total = self.num_prototypes
        self.register_buffer("source_id", torch.zeros(total, PROVENANCE_ID_BYTES, dtype=torch.uint8))
        self.register_buffer("source_box", torch.full((total, 6), -1, dtype=torch.long))
        self.register_buffer("source_similarity", torch.zeros(total))
        self.register_buffer("push_epoch", torch.full((total,), -1, dtype=torch.long))

    @property
    def num_prototypes(self) -> int:
        return sum(self.prototypes_per_scale)

    def scale_slices(self) -> list[slice]:
        """Index ranges of each scale in the concatenated similarity vector S(x, P)."""
        bounds = [0]
        for k in self.prototypes_per_scale:
            bounds.append(bounds[-1] + k)
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]

    def vector(self, scale: int) -> torch.Tensor:
        """p_s, (K_s, E), of active scale ``scale`` (a loop: TorchScript indexes a ParameterList by literals only)."""
        for i, vectors in enumerate(self.vectors):
            if i == scale:
                return vectors
        raise IndexError(f"scale index {scale} is out of range for {len(self.prototypes_per_scale)} scales.")

    def similarity(self, descriptors: torch.Tensor, scale: int) -> torch.Tensor:
        """``S_s^k = cos(H_s^k, p_s^k)`` (§2.2): (B, K_s) from descriptors (B, K_s, E) of active scale ``scale``."""
        return F.cosine_similarity(descriptors, self.vector(scale).unsqueeze(0), dim=-1, eps=1e-8)

    def voxel_similarities(self, features: torch.Tensor, scale: int) -> torch.Tensor:
        """Cosine similarity of every voxel's embedding to every prototype of ``scale`` (ProtoPNet).

        Args:
            features: G_s, (B, E, H, W, D).
            scale: index into the active scales.

        Returns:
            (B, K_s, H, W, D).
        """
        g = F.normalize(features, dim=1, eps=1e-8)
        p = F.normalize(self.vector(scale), dim=1, eps=1e-8)
        return torch.einsum("ke,behwd->bkhwd", p, g)

    def set_source_ids(self, index: torch.Tensor, subject_ids: list[str]) -> None:
        """Record the subject id of the pushed prototypes ``index`` (global indices, scale order)."""
        for i, sid in zip(index.tolist(), subject_ids):
            raw = sid.encode("utf-8")[:PROVENANCE_ID_BYTES]
            row = torch.zeros(PROVENANCE_ID_BYTES, dtype=torch.uint8)
            row[: len(raw)] = torch.tensor(list(raw), dtype=torch.uint8)
            self.source_id[i] = row

    def source_ids(self) -> list[str]:
        """Subject id of every prototype's source case ("" before the first push), scale order."""
        return [bytes(row[row > 0].tolist()).decode("utf-8", errors="replace") for row in self.source_id]

    def provenance(self) -> list[dict]:
        """One dict per prototype: scale index, index within its scale, source subject, box, similarity, epoch."""
        records, ids = [], self.source_ids()
        for scale, sl in enumerate(self.scale_slices()):
            for k, j in enumerate(range(sl.start, sl.stop)):
                records.append(
                    {
                        "scale_index": scale,
                        "index": k,
                        "global_index": j,
                        "source_subject_id": ids[j] or None,
                        "source_box": self.source_box[j].tolist(),
                        "source_similarity": float(self.source_similarity[j]),
                        "push_epoch": int(self.push_epoch[j]),
                    }
                )
        return records
