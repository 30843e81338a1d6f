"""Calibration next to BAC (issue 5, beyond the paper): expected calibration error and the reliability diagram.

ECE (Guo et al., ICML 2017): the cases are binned by confidence (the top-class probability) into ``n_bins`` equal
bins (lo, hi] of [0, 1] (the first bin also holds 0); ECE = sum over bins of |B| / N × |accuracy(B) − confidence(B)|.
The diagram is returned as a ``matplotlib.figure.Figure`` (no pyplot, no display needed); writing it to a file is
the caller's job.
"""

from __future__ import annotations

import torch
from matplotlib.figure import Figure

from monai_protoshare.metrics.utils import BatchCumulativeMetric, as_class_indices

__all__ = [
    "ExpectedCalibrationErrorMetric",
    "calibration_bins",
    "compute_expected_calibration_error",
    "reliability_diagram",
]

#: Equal-width confidence bins, as in Guo et al. (2017).
DEFAULT_BINS = 10
#: Tolerance on rows of probabilities summing to 1 (float32 softmax is off by ~1e-7).
_SUM_TOLERANCE = 1e-3


def _as_probabilities(probs: torch.Tensor) -> torch.Tensor:
    """(N, C) probabilities from (N, C) or from (N,) / (N, 1) probabilities of class 1 (binary)."""
    probs = torch.as_tensor(probs).double()
    if probs.ndim == 0 or probs.shape[0] == 0:
        raise ValueError("probs is empty: the evaluation set has no cases.")
    if probs.ndim == 2 and probs.shape[1] == 1:
        probs = probs[:, 0]
    if probs.ndim == 1:
        probs = torch.stack([1 - probs, probs], dim=1)
    if probs.ndim != 2:
        raise ValueError(f"probs must be (N, C) probabilities or (N,) for class 1, got shape {tuple(probs.shape)}.")
    bad = ~(torch.isfinite(probs).all(dim=1) & (probs >= 0).all(dim=1) & (probs <= 1).all(dim=1))
    bad |= (probs.sum(dim=1) - 1).abs() > _SUM_TOLERANCE
    if bad.any():
        i = int(torch.nonzero(bad)[0])
        raise ValueError(
            f"probs of case {i} are not probabilities summing to 1: {probs[i].tolist()} (apply a softmax to "
            "logits first, e.g. monai.transforms.Activations(softmax=True))."
        )
    return probs


def calibration_bins(
    probs: torch.Tensor, y: torch.Tensor, n_bins: int = DEFAULT_BINS
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean confidence, accuracy and number of cases in each of ``n_bins`` equal confidence bins.

    Args:
        probs: probabilities (N, C), or (N,) / (N, 1) probabilities of class 1.
        y: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        n_bins: number of equal-width bins of [0, 1].

    Returns:
        ``(confidence, accuracy, counts)``, each (n_bins,) float64; empty bins hold NaN confidence and accuracy.

    Raises:
        ValueError: on an empty set, rows that are not probabilities (naming the case), labels outside
            ``range(C)``, different lengths, or ``n_bins < 1``.
    """
    if n_bins < 1:
        raise ValueError(f"n_bins must be >= 1, got {n_bins}.")
    probs = _as_probabilities(probs)
    y = as_class_indices(y, "y", probs.shape[1]).to(probs.device)
    if len(y) != len(probs):
        raise ValueError(f"probs and y must hold the same number of cases, got {len(probs)} and {len(y)}.")
    confidence, predicted = probs.max(dim=1)
    edges = torch.linspace(0, 1, n_bins + 1, dtype=torch.double, device=probs.device)
    bins = torch.bucketize(confidence, edges[1:-1], right=False)  # bin b holds (edges[b], edges[b + 1]]
    counts = torch.bincount(bins, minlength=n_bins).double()
    conf_sum = torch.bincount(bins, weights=confidence, minlength=n_bins)
    hit_sum = torch.bincount(bins, weights=(predicted == y).double(), minlength=n_bins)
    return conf_sum / counts, hit_sum / counts, counts  # 0 / 0 = NaN marks empty bins


def compute_expected_calibration_error(probs: torch.Tensor, y: torch.Tensor, n_bins: int = DEFAULT_BINS) -> float:
    """Expected calibration error (Guo et al., 2017): the case-weighted mean |accuracy − confidence| over bins.

    Args:
        probs: probabilities (N, C), or (N,) / (N, 1) probabilities of class 1.
        y: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        n_bins: number of equal-width confidence bins.

    Returns:
        ECE in [0, 1]; 0 for a perfectly calibrated model.

    Raises:
        ValueError: see :func:`calibration_bins`.

    Example:
        >>> compute_expected_calibration_error(torch.tensor([[0.25, 0.75], [0.25, 0.75]]), torch.tensor([1, 0]))
        0.25
    """
    return _binned_ece(*calibration_bins(probs, y, n_bins))


def _binned_ece(confidence: torch.Tensor, accuracy: torch.Tensor, counts: torch.Tensor) -> float:
    filled = counts > 0
    return float((counts[filled] / counts.sum() * (accuracy[filled] - confidence[filled]).abs()).sum())


def reliability_diagram(
    probs: torch.Tensor, y: torch.Tensor, n_bins: int = DEFAULT_BINS, title: str | None = None
) -> Figure:
    """Reliability diagram: accuracy per confidence bin against the diagonal of perfect calibration.

    Bars show the accuracy of each non-empty bin, hatched bars the gap to its mean confidence, and a step line
    on a second axis the share of cases per bin; the title gives the ECE.

    Args:
        probs: probabilities (N, C), or (N,) / (N, 1) probabilities of class 1.
        y: ground-truth class indices (N,) or (N, 1), or one-hot (N, C).
        n_bins: number of equal-width confidence bins.
        title: prefix of the title (e.g. the model and fold).

    Returns:
        A ``matplotlib.figure.Figure`` (render with ``fig.savefig(...)``; no pyplot state is touched).

    Raises:
        ValueError: see :func:`calibration_bins`.
    """
    confidence, accuracy, counts = calibration_bins(probs, y, n_bins)
    ece = _binned_ece(confidence, accuracy, counts)
    filled = counts > 0
    width = 1.0 / n_bins
    centres = (torch.arange(n_bins, dtype=torch.double) + 0.5) * width
    fig = Figure(figsize=(4.5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(centres[filled], accuracy[filled], width=width, edgecolor="black", color="tab:blue", label="accuracy")
    ax.bar(
        centres[filled],
        (confidence - accuracy)[filled],
        bottom=accuracy[filled],
        width=width,
        edgecolor="tab:red",
        color="none",
        hatch="//",
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    share = ax.twinx()
    share.step(torch.linspace(0, 1, n_bins + 1)[1:], counts / counts.sum(), where="pre", color="tab:green")
    share.set(ylim=(0, 1), ylabel="share of cases")
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy")
    ax.set_title(f"{title + ': ' if title else ''}ECE = {ece:.3f} (N = {int(counts.sum())})")
    ax.legend(loc="upper left", fontsize="small")
    return fig


class ExpectedCalibrationErrorMetric(BatchCumulativeMetric):
    """Expected calibration error accumulated over iterations: buffers probabilities (B, C) and labels (B,).

    Called as ``metric(probs, y)``; ``probs`` must be probabilities (apply a softmax to logits first).

    Args:
        n_bins: number of equal-width confidence bins.

    Example:
        >>> metric = ExpectedCalibrationErrorMetric()
        >>> _ = metric(torch.tensor([[0.25, 0.75], [0.25, 0.75]]), torch.tensor([1, 0]))
        >>> metric.aggregate()
        0.25
    """

    def __init__(self, n_bins: int = DEFAULT_BINS) -> None:
        super().__init__()
        self.n_bins = n_bins

    def _compute_tensor(self, y_pred: torch.Tensor, y: torch.Tensor | None = None) -> list[torch.Tensor]:  # type: ignore[override]
        """Checked probabilities (B, C) and labels (B,) of a batch: the buffers of this metric."""
        if y is None:
            raise ValueError("ExpectedCalibrationErrorMetric needs the labels y.")
        probs = _as_probabilities(y_pred)
        labels = as_class_indices(y, "y", probs.shape[1])
        if len(labels) != len(probs):
            raise ValueError(f"probs and y must hold the same number of cases, got {len(probs)} and {len(labels)}.")
        return [probs, labels]

    def aggregate(self) -> float:
        """ECE over every case accumulated since ``reset()``."""
        probs, labels = self._buffer()
        return compute_expected_calibration_error(probs, labels, self.n_bins)
