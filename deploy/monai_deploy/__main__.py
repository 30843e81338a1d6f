"""Entry point of the packaged application (``python <app folder>``, as a MAP runs it)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from app import UMProtoShareApp  # noqa: E402

if __name__ == "__main__":
    UMProtoShareApp().run()
