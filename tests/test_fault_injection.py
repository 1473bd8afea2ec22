"""A short SIGKILL campaign (benchmarks/fault_injection.py runs the long one)."""

from __future__ import annotations

import sys

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fault_injection import campaign  # noqa: E402


def test_sigkill_at_random_moments_never_breaks_the_run_folder(tmp_path):
    result = campaign(tmp_path, kills=5, seed=1, log=lambda _: None)
    assert result["survived"] == 5
    assert result["final_steps"] > 0
