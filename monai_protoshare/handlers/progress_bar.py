"""A per-epoch progress bar for bundle configs (``_target_`` handlers need ``attach(engine)``)."""

from __future__ import annotations

from ignite.handlers import ProgressBar as IgniteProgressBar

__all__ = ["ProgressBar"]


class ProgressBar:
    """tqdm progress bar over an epoch's iterations showing the running loss and the stage.

    Args:
        output_key: key of ``engine.state.output`` shown in the bar (None: none, e.g. for evaluators).
        rank: only rank 0 shows a bar.
    """

    def __init__(self, output_key: str | None = "loss", rank: int = 0) -> None:
        self.output_key = output_key
        self.rank = rank

    def attach(self, engine) -> None:
        if self.rank != 0:
            return
        key = self.output_key

        def shown(output):
            return {key: output[key]} if key and isinstance(output, dict) and key in output else {}

        IgniteProgressBar(persist=False, desc=type(engine).__name__).attach(engine, output_transform=shown)
