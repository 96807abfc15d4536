"""``measures:`` selects what a run computes and writes."""

from __future__ import annotations

import pandas as pd

from interventions.pipeline import run_spec
from interventions.spec.measures import MEASURES
from interventions.spec import Spec

from .conditions_helpers import PLANTED_BASE

ZERO = [{"kind": "zero", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"]}]


def test_measures_select_columns_and_skip_what_is_not_asked(tmp_path, cache_dir, capfd):
    spec = Spec.from_dict({**PLANTED_BASE, "limit": 1, "report": True, "measures": ["sinks", "kl"],
                           "interventions": ZERO})
    result = run_spec(spec, results_root=tmp_path, progress=False)
    assert "statistics and report skipped: they need the measures sink_score, hidden, primary_sink_score" in capfd.readouterr().err
    cols = set(result.effects.columns)
    assert {"is_sink", "clean_is_sink", "lifetime", "clean_lifetime", "suppressed", "kl"} <= cols
    for measure in ("hidden", "sink_score", "primary_sink_score", "delta_nll"):
        assert not (set(MEASURES[measure].columns) & cols), measure
    assert result.stats is None and not (result.out / "stats.json").exists()
    assert (result.summary.sinks_after < result.summary.sinks_clean).all()

    no_divergence = Spec.from_dict({**PLANTED_BASE, "limit": 1, "report": False, "measures": ["sinks"],
                                    "interventions": ZERO})
    result = run_spec(no_divergence, results_root=tmp_path, progress=False)
    assert "kl" not in result.effects.columns
    parts = list((result.out / "downstream.parquet").glob("*.parquet"))
    assert all(pd.read_parquet(p).empty for p in parts)
