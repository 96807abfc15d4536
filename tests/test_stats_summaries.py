"""stats.summaries: the descriptive means (with trace-bootstrap intervals) that the figures draw."""

from __future__ import annotations

import numpy as np
import pandas as pd

from interventions.stats import trace_means
from interventions.stats.summaries import dose_levels


def _frame(values_by_trace: dict[int, list[float]], group: str = "a") -> pd.DataFrame:
    return pd.DataFrame([{"trace": t, "g": group, "v": v} for t, vs in values_by_trace.items() for v in vs])


def test_trace_means_exact_zero_and_degenerate_have_no_interval():
    zero = trace_means(_frame({t: [0.0, 0.0] for t in range(6)}), "v", ["g"])[0]
    assert zero["exact_zero"] and zero["estimate"] == 0.0 and zero["ci_low"] is None and zero["ci_high"] is None
    same = trace_means(_frame({t: [1.0, 3.0] for t in range(6)}), "v", ["g"])[0]
    assert same["degenerate"] and same["estimate"] == 2.0 and same["ci_low"] is None
    assert "same mean" in same["degenerate_reason"]
    one = trace_means(_frame({0: [1.0, 2.0]}), "v", ["g"])[0]
    assert one["degenerate"] and one["ci_low"] is None


def test_trace_means_interval_is_a_trace_bootstrap_of_the_token_mean():
    rng = np.random.default_rng(0)
    data = {t: list(rng.normal(1.0 + 0.3 * t, 0.1, size=2 + t % 3)) for t in range(10)}
    r = trace_means(_frame(data), "v", ["g"], seed=3)[0]
    flat = [v for vs in data.values() for v in vs]
    assert np.isclose(r["estimate"], np.mean(flat))  # a mean over tokens
    assert r["ci_low"] < r["estimate"] < r["ci_high"] and r["n_traces"] == 10 and r["n_units"] == len(flat)
    # traces are the unit: the interval is about as wide as the spread of trace means allows
    means = np.array([np.mean(v) for v in data.values()])
    assert 0.5 * means.std() / np.sqrt(10) * 3.92 < r["ci_high"] - r["ci_low"] < 2.0 * means.std() / np.sqrt(10) * 3.92
    assert r == trace_means(_frame(data), "v", ["g"], seed=3)[0]  # seeded


def test_dose_levels_keep_tokens_of_one_target_set_apart():
    rows = []
    for trace in range(4):
        for factor in (2.0, 5.0):
            for token, position, life in ((" ~", 3, int(factor)), (" &", 7, 0)):
                rows.append({"condition": f"x{factor:g}", "kind": "scale", "is_control": False, "trace": trace,
                             "position": position, "token": token, "target_set": "weak", "factor": factor,
                             "lifetime": life + trace % 2, "clean_lifetime": 0, "ref_sink_score": 0.1 * life,
                             "clean_ref_sink_score": 0.0})
    levels = pd.DataFrame(dose_levels(pd.DataFrame(rows)))
    life = levels[levels["measure"] == "lifetime"]
    assert set(life["series"]) == {"' ~' (weak)", "' &' (weak)"}
    at5 = life.set_index(["series", "factor"])["estimate"]
    assert at5[("' ~' (weak)", 5.0)] == 5.5 and at5[("' &' (weak)", 5.0)] == 0.5
    clean = life[life["factor"] == 1.0]
    assert len(clean) == 2 and clean["exact_zero"].all()
