"""Stage 2, the push (eq. 20): every prototype becomes the descriptor of its best-matching training case.

The computation only; :class:`~monai_protoshare.engines.PrototypeTrainer` runs it after each block of latent epochs.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ..networks.modes import evaluating

__all__ = ["PushResult", "map_mass_box", "push_prototypes"]


@dataclass
class PushResult:
    """Outcome of one push.

    Attributes:
        similarity_before: (K_total,) cosine similarity of each old prototype to its chosen descriptor.
        subject_ids: source case of each prototype, scale order.
        boxes: (K_total, 6) voxel boxes (x0, y0, z0, x1, y1, z1; end exclusive) in network-input space.
        num_cases: cases seen (over all ranks).
        seconds: wall time of the pass.
        similarities: (N, K_total) similarity of every case this rank saw to the NEW prototypes, and
        labels: (N,) their classes: the inputs of stage 3 for un-augmented classifier training
            (:class:`~monai_protoshare.engines.SimilarityBatches`), obtained without another pass.
    """

    similarity_before: torch.Tensor
    subject_ids: list[str]
    boxes: torch.Tensor
    num_cases: int
    seconds: float
    similarities: torch.Tensor
    labels: torch.Tensor


def map_mass_box(attention: torch.Tensor, input_size: tuple[int, ...], fraction: float = 0.5) -> torch.Tensor:
    """3D box of a map's mass: voxels ≥ ``fraction`` × the map's maximum, scaled to the input grid.

    Args:
        attention: one map (H_s, W_s, D_s).
        input_size: network input size (H, W, D).
        fraction: relative threshold.

    Returns:
        (6,) int64: x0, y0, z0, x1, y1, z1 in input voxels, end exclusive.
    """
    active = attention >= fraction * attention.max()
    lows, highs = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = active.any(dim=other).nonzero().flatten()
        step = input_size[axis] / attention.shape[axis]
        lows.append(int(idx.min()) * step)
        highs.append((int(idx.max()) + 1) * step)
    return torch.tensor([round(v) for v in lows + highs], dtype=torch.long)


@torch.no_grad()
def push_prototypes(
    network: nn.Module,
    data_loader: Iterable[Mapping[str, Any]],
    device: torch.device | str,
    epoch: int = -1,
    image_key: str = "image",
    label_key: str = "label",
    id_key: str = "subject_id",
) -> PushResult:
    """Eq. (20): ``p_s^k ← H_s^k(x_n')``, ``n' = argmax_n S_s^k(x_n, p_s^k)``, over the un-augmented training set.

    One no-grad pass with BN in eval mode. Each prototype's candidates are the descriptors computed with
    its **own** attention map (eq. 14); class-specific prototypes only consider cases of their class (as
    ProtoPNet/MProtoNet do). The provenance buffers of the prototype bank record the source subject, the
    box of the map's mass in that case, the similarity before the push and the epoch. Under
    ``torch.distributed`` each rank scans its shard, candidates are gathered, and every rank ends with
    the same prototypes (highest similarity; ties go to the lowest rank).

    Args:
        network: a :class:`~monai_protoshare.networks.PrototypeNetwork`.
        data_loader: batches with ``image`` (B, 4, H, W, D), ``label`` (B,), ``subject_id`` (B strings).
        device: device of the network.
        epoch: recorded in the provenance.

    Returns:
        :class:`PushResult`.
    """
    start = time.perf_counter()
    with evaluating(network):
        bank = network.prototypes
        total = bank.num_prototypes
        best = _Candidates.empty(total, network.embedding_dim, device)
        num_cases = 0
        matching_inputs, all_labels = [], []
        for batch in data_loader:
            images = batch[image_key].to(device)
            labels = torch.as_tensor(batch[label_key]).long().view(-1).to(device)
            num_cases += images.shape[0]
            out = network.explain(images, online_cam=False)
            # what the similarities to the NEW prototypes are computed from: the descriptors (B, K_s, E), which do not
            # depend on the prototypes; for ProtoPNet the features G_s (B, E, H_s, W_s, D_s), whose best-matching voxels do
            matching_inputs.append([t.cpu() for t in (out.features if network.mapping == "none" else out.descriptors)])
            all_labels.append(labels.cpu())
            best.update(network, out, labels, list(batch[id_key]), tuple(images.shape[2:]))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            best.sim, best.desc, best.box, best.ids, num_cases = _gather_best(
                best.sim, best.desc, best.box, best.ids, num_cases
            )
        missing = [j for j in range(total) if best.ids[j] == ""]
        if missing:
            raise ValueError(
                f"push found no candidate for prototypes {missing} (global indices): the push data loader holds no "
                "case of their class."
            )
        best.write_to(bank, epoch)
        similarities = _similarities_after_push(network, matching_inputs, device)
    return PushResult(
        best.sim.cpu(), best.ids, best.box, num_cases, time.perf_counter() - start, similarities, torch.cat(all_labels)
    )


@dataclass
class _Candidates:
    """Each prototype's best-matching descriptor so far (eq. 20) and its provenance, global index order.

    Attributes:
        sim: (K_total,) cosine similarity of the descriptor to the old prototype (``-inf``: none yet).
        desc: (K_total, E) the descriptor.
        box: (K_total, 6) box of its attention map's mass in input voxels (:func:`map_mass_box`).
        ids: its source case (``""``: none yet).
    """

    sim: torch.Tensor
    desc: torch.Tensor
    box: torch.Tensor
    ids: list[str]

    @classmethod
    def empty(cls, total: int, dim: int, device: torch.device | str) -> _Candidates:
        return cls(
            torch.full((total,), -float("inf"), device=device),
            torch.zeros(total, dim, device=device),
            torch.full((total, 6), -1, dtype=torch.long),
            [""] * total,
        )

    def update(
        self, network: nn.Module, out: Any, labels: torch.Tensor, ids: list[str], input_size: tuple[int, ...]
    ) -> None:
        """Take a batch's better descriptors. Each prototype's candidates are computed with its own attention map
        (eq. 14); a class-specific prototype only considers cases of its class."""
        bank = network.prototypes
        identity = network.prototype_class_identity if network.ownership == "class_specific" else None
        for i, sl in enumerate(bank.scale_slices()):
            descriptors = out.descriptors[i].float()  # (B, K_s, E)
            sims = F.cosine_similarity(descriptors, bank.vectors[i].unsqueeze(0).float(), dim=-1, eps=1e-8)
            if identity is not None:
                sims = sims.masked_fill(identity[labels][:, sl] == 0, -float("inf"))
            batch_best, case = sims.max(dim=0)  # (K_s,)
            for k in (batch_best > self.sim[sl]).nonzero().flatten().tolist():
                j, b = sl.start + k, int(case[k])
                self.sim[j] = batch_best[k]
                self.desc[j] = descriptors[b, k]
                self.ids[j] = str(ids[b])
                self.box[j] = map_mass_box(out.attention[i][b, k].float(), input_size)

    def write_to(self, bank: nn.Module, epoch: int) -> None:
        """Replace the prototypes by the descriptors and fill the bank's provenance buffers."""
        for i, sl in enumerate(bank.scale_slices()):
            bank.vectors[i].data.copy_(self.desc[sl].to(bank.vectors[i].dtype))
        bank.set_source_ids(torch.arange(len(self.ids)), self.ids)
        bank.source_box.copy_(self.box)
        bank.source_similarity.copy_(self.sim.to(bank.source_similarity))
        bank.push_epoch.fill_(int(epoch))


def _similarities_after_push(network: nn.Module, matching_inputs: list[list[torch.Tensor]], device) -> torch.Tensor:
    """S(x, P) (N, K_total) of every pushed case to the new prototypes, as the eval-mode forward computes them.

    Mapping networks: cosine of the cached descriptors (eq. 14-15). ProtoPNet: top-α mean of the per-voxel
    similarities of the cached features to the new prototypes (its best-matching voxels move with the prototypes,
    so the descriptors of the old prototypes' best voxels would give different similarities).
    """
    bank = network.prototypes
    batches = []
    for per_scale in matching_inputs:
        sims = []
        for i, t in enumerate(per_scale):
            t = t.to(device)
            sims.append(network.voxel_matching(t, i)[0] if network.mapping == "none" else bank.similarity(t, i))
        batches.append(torch.cat(sims, dim=1).float().cpu())
    return torch.cat(batches)


def _gather_best(best_sim, best_desc, best_box, best_id, num_cases):
    """Combine per-rank candidates: the highest similarity wins, ties go to the lowest rank."""
    payload = (best_sim.cpu(), best_desc.cpu(), best_box, best_id, num_cases)
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, payload)
    sims = torch.stack([g[0] for g in gathered])  # (R, K)
    winner = sims.argmax(dim=0)  # first maximum = lowest rank
    device = best_sim.device
    k = torch.arange(sims.shape[1])
    best_sim = sims[winner, k].to(device)
    best_desc = torch.stack([g[1] for g in gathered])[winner, k].to(device)
    best_box = torch.stack([g[2] for g in gathered])[winner, k]
    best_id = [gathered[int(r)][3][j] for j, r in enumerate(winner)]
    return best_sim, best_desc, best_box, best_id, sum(g[4] for g in gathered)
