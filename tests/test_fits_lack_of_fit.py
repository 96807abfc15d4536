"""The log-linear lack-of-fit check of the norm -> score fit (issue #18, H2's second half).

``fit_norm_score(...)["lack_of_fit"]`` asks whether a monotone (isotonic) fit of the log
sink-score ratio on log norm beats the log-linear one, with a wild cluster bootstrap over
traces. Calibrated here on seeded synthetic sinks laid out like the run's fixed window
(every sink has the layers l_start + 1 .. l_start + 4, a trace effect, a sink effect and
layer effects): an exactly log-linear law is rejected at about the nominal rate, a step
(plateau) law is rejected with power, and too little data gives no p.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from interventions.stats import fit_norm_score, log_linear_check
from interventions.stats.fits import LOF_NOT_REJECTED, LOF_REJECTED, MIN_LOF_TRACES

ALPHA = 0.05


def window_rows(rng: np.random.Generator, law, *, n_traces: int = 12, sinks: tuple[int, int] = (4, 8),
                noise_sd: float = 0.2) -> pd.DataFrame:
    """log(sink/primary) = law(log norm) + trace effect + sink effect + layer effect + noise, 4 window layers per sink."""
    layer_effect = rng.normal(0, 0.5, size=40)
    rows = []
    for t in range(n_traces):
        u = rng.normal(0, 0.4)
        for s in range(int(rng.integers(*sinks))):
            x, e = rng.normal(3.0, 0.7), rng.normal(0, 0.3)
            l0 = int(rng.integers(14, 20))
            for layer in range(l0 + 1, l0 + 5):
                y = law(x) + u + e + layer_effect[layer] + rng.normal(0, noise_sd)
                rows.append({"trace": f"t{t}", "position": 100 + s, "layer": layer, "l_start": l0, "alive": True,
                             "mlp_out_norm": math.exp(x), "sink_score": 0.6 * math.exp(y), "primary_sink_score": 0.6})
    return pd.DataFrame(rows)


def linear_law(x):
    return -2.0 + 0.8 * x


def step_law(x):
    """A plateau law: monotone in the norm, but one jump at log norm 3 instead of a straight line."""
    return -2.0 + 1.5 * (x > 3.0)


def lack_of_fit(df: pd.DataFrame, seed: int) -> dict:
    return fit_norm_score(df, by_layer=False, mixed=False, seed=seed)["lack_of_fit"]


def test_log_linear_law_is_rejected_at_about_the_nominal_rate():
    n = 40
    ps = np.array([lack_of_fit(window_rows(np.random.default_rng(7000 + i), linear_law), seed=i)["p"]
                   for i in range(n)])
    rate = float(np.mean(ps < ALPHA))
    bound = ALPHA + 2 * math.sqrt(ALPHA * (1 - ALPHA) / n)
    print(f"log-linear law: rejection rate {rate:.3f} over {n} seeds (bound {bound:.3f}); mean p {ps.mean():.3f}")
    assert rate <= bound
    # the p-values spread over (0, 1] under the null (a check stuck at p = 1 would pass the line above)
    assert 0.3 <= ps.mean() <= 0.7 and ps.min() < 0.3


def test_step_law_is_rejected_with_power():
    n = 20
    results = [lack_of_fit(window_rows(np.random.default_rng(100 + i), step_law), seed=i) for i in range(n)]
    power = float(np.mean([r["p"] < ALPHA for r in results]))
    print(f"step law: power {power:.2f} over {n} seeds; median statistic "
          f"{np.median([r['statistic'] for r in results]):.3f}")
    assert power >= 0.8
    assert sum(r["verdict"] == LOF_REJECTED for r in results) == round(power * n)
    assert all(r["verdict"] in (LOF_REJECTED, LOF_NOT_REJECTED) for r in results)


def test_result_fields_and_seeded():
    df = window_rows(np.random.default_rng(3), linear_law)
    a, b = lack_of_fit(df, seed=11), lack_of_fit(df, seed=11)
    assert a == b
    assert a["estimable"] and a["run"] and 0 <= a["statistic"] < 1 and 0 < a["p"] <= 1
    assert a["B"] == 999 and a["p"] * 1000 == pytest.approx(round(a["p"] * 1000))
    assert a["n_traces"] == 12 and a["n_rows"] == len(df) and a["isotonic_blocks"] >= 1
    assert a["direction"] == "non-decreasing" and a["weights"] == "rademacher"
    assert a["sse_isotonic"] <= a["sse_linear"]
    # a falling law: the monotone fit follows the slope's sign, so the line is nested and the statistic stays >= 0
    falling = lack_of_fit(window_rows(np.random.default_rng(4), lambda x: 1.0 - 0.8 * x), seed=0)
    assert falling["direction"] == "non-increasing" and 0 <= falling["statistic"] < 1
    # few traces: Webb weights
    few = lack_of_fit(window_rows(np.random.default_rng(5), linear_law, n_traces=MIN_LOF_TRACES), seed=0)
    assert few["estimable"] and few["weights"] == "webb" and 0 < few["p"] <= 1


def assert_not_estimable(r: dict, why: str):
    assert r["estimable"] is False and r["p"] is None and r["statistic"] is None
    assert r["verdict"].startswith("not estimable: ") and why in r["verdict"]


def test_degenerate_inputs_have_no_p():
    df = window_rows(np.random.default_rng(6), linear_law, sinks=(6, 7))
    one_trace = df[df["trace"] == "t0"]
    assert_not_estimable(lack_of_fit(one_trace, seed=0), "1 trace(s)")
    few = df[df["trace"].isin([f"t{i}" for i in range(MIN_LOF_TRACES - 1)])]
    assert_not_estimable(lack_of_fit(few, seed=0), f"{MIN_LOF_TRACES - 1} trace(s)")
    # constant norm: the log-linear fit itself is not identified
    r = fit_norm_score(df.assign(mlp_out_norm=5.0), by_layer=False, mixed=False)
    assert r["estimable"] is False
    assert_not_estimable(r["lack_of_fit"], "single distinct")
    # two distinct norms: any monotone fit is a line through two means
    two = df.assign(mlp_out_norm=np.where(df["position"] % 2 == 0, 5.0, 9.0))
    assert_not_estimable(lack_of_fit(two, seed=0), "2 distinct mlp_out_norm")
    # an exact log-linear law (no trace, sink or row noise, no layer effect): zero residual variance
    exact = df.assign(sink_score=0.6 * np.exp(linear_law(np.log(df["mlp_out_norm"]))))
    assert_not_estimable(lack_of_fit(exact, seed=0), "zero variance")
    assert log_linear_check(fit_norm_score(one_trace, by_layer=False, mixed=False)) is not None
    assert log_linear_check(r) is None


def test_planted_run_has_the_check_in_stats_verdict_and_report(norm_scale_run):
    stats = norm_scale_run.stats
    ns = stats["norm_score"]
    lof = ns["lack_of_fit"]
    print("planted run lack_of_fit:", {k: lof.get(k) for k in ("verdict", "statistic", "p", "n_rows", "n_traces",
                                                                 "isotonic_blocks", "weights")})
    assert ns["estimable"] and lof["run"]
    if lof["estimable"]:
        assert 0 <= lof["p"] <= 1 and 0 <= lof["statistic"] < 1
        assert lof["verdict"] in (LOF_REJECTED, LOF_NOT_REJECTED)
    else:
        assert lof["p"] is None and lof["verdict"].startswith("not estimable: ")
    h2 = [v for v in stats["verdicts"].values() if "lifetime_slope" in (v.get("details") or {})]
    assert h2 and all(v["log_linear_check"]["p"] == lof["p"] for v in h2)
    report = norm_scale_run.report.read_text()
    assert "Log-linear form: " + lof["verdict"] in report


def test_report_phrase_shows_p_only_when_estimable():
    from interventions.report.formatting import lack_of_fit_text

    df = window_rows(np.random.default_rng(8), step_law)
    r = lack_of_fit(df, seed=0)
    ok = lack_of_fit_text(r)
    assert r["p"] < ALPHA and ok.startswith(LOF_REJECTED + ";")
    assert f"bootstrap p {r['p']:.2g}, B = 999, {r['n_rows']} rows / 12 traces" in ok
    none = lack_of_fit_text(lack_of_fit(df[df["trace"] == "t0"], seed=0))
    assert none == "not estimable: 1 trace(s); the trace bootstrap needs >= 5" and " p " not in none
    assert lack_of_fit_text({"run": False, "note": "not requested"}) == ""
