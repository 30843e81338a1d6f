"""The benchmark scripts run as ``python benchmarks/<script>.py``: put that folder on ``sys.path`` for their tests."""

import sys
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.insert(0, str(BENCHMARKS))
