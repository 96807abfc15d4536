"""``benchmarks/h1_occurrences.py``: H1 read over every occurrence of the sink tokens separates noisy-h1 (the l_start
MLP pushes near-threshold tokens both ways: zeroing it creates more sinks among the non-sink occurrences than it
removes) from the planted model (the MLP writes the sinks: zeroing removes every one and creates none). The README's
calibration section reports these counts; H1's own verdict cannot tell the two apart at G = 30."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
from h1_occurrences import occurrence_counts  # noqa: E402


@pytest.mark.slow
def test_zeroing_creates_sinks_at_non_sink_occurrences_on_noisy_h1_and_none_on_planted(cache_dir):
    noisy = occurrence_counts("testbed:noisy-h1@seed7", limit=30)
    print(noisy)
    sinks, others = noisy.loc["sinks"], noisy.loc["others"]
    assert sinks["sinks_after_zeroing"] < sinks["clean_sinks"]             # clean sinks do fall back (23 -> 14)
    assert others["clean_sinks"] == 0 and others["sinks_after_zeroing"] > 0
    gained, lost = others["sinks_after_zeroing"], sinks["clean_sinks"] - sinks["sinks_after_zeroing"]
    assert gained > lost, (gained, lost)                                    # measured 40 gained, 9 lost
    planted = occurrence_counts("testbed:planted", limit=8)
    print(planted)
    assert planted.loc["sinks", "clean_sinks"] > 0 and planted.loc["sinks", "sinks_after_zeroing"] == 0
    if "others" in planted.index:
        assert planted.loc["others", "sinks_after_zeroing"] == 0
