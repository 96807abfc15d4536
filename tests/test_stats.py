"""Tests of the statistics layer on seeded synthetic data with known answers.

Simulation tests check calibration (CI coverage, null rejection rate), planted-structure
tests check recovery (plateaus, breakpoints, valley, dose-response), verdict tests check the
rule end to end. Everything is seeded; the whole file runs in well under 90 s on 2 cores.
"""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest

from interventions.stats import (
    VERDICT_RULE,
    compensation,
    dose_response,
    fit_norm_lifetime,
    fit_norm_score,
    judge,
    mask_primary_change,
    per_layer_effects,
    to_jsonable,
    verdict,
)

TRUE_SLOPE = 0.8
N_LAYERS = 12

# ---------------------------------------------------------------------------------------------
# synthetic data
# ---------------------------------------------------------------------------------------------


def norm_score_data(rng: np.random.Generator, slope: float = TRUE_SLOPE, n_traces: int = 20) -> pd.DataFrame:
    """log(sink/primary) = a + slope*log(norm) + trace effect + sink effect + layer effect + noise."""
    layer_effect = rng.normal(0, 0.5, size=40)
    rows = []
    for t in range(n_traces):
        u = rng.normal(0, 0.4)
        for s in range(int(rng.integers(3, 7))):
            log_norm, e = rng.normal(3.0, 0.7), rng.normal(0, 0.3)
            l0, life = int(rng.integers(18, 22)), int(rng.integers(2, 7))
            for layer in range(l0, l0 + life):
                y = -2 + slope * log_norm + u + e + layer_effect[layer] + rng.normal(0, 0.2)
                rows.append({"trace": f"t{t}", "position": 100 + s, "layer": layer, "mlp_out_norm": math.exp(log_norm),
                             "sink_score": 0.6 * math.exp(y), "primary_sink_score": 0.6})
    return pd.DataFrame(rows)


def null_effects_data(rng: np.random.Generator, n_traces: int = 10, n_layers: int = 8, per_trace: int = 3,
                      planted: dict[int, float] | None = None) -> pd.DataFrame:
    """Per-layer changes that are zero in expectation (trace-level shared noise), optional planted shifts."""
    planted = planted or {}
    rows = []
    for t in range(n_traces):
        trace_noise = rng.normal(0, 0.5, size=n_layers)
        for ctrl in (False, True):
            for k in range(per_trace):
                for layer in range(n_layers):
                    clean = rng.normal(1, 1)
                    shift = 0.0 if ctrl else planted.get(layer, 0.0)
                    rows.append({"condition": "c", "trace": f"t{t}", "position": 10 * k + int(ctrl), "is_control": ctrl,
                                 "layer": layer, "x": clean + shift + trace_noise[layer] + rng.normal(0, 1),
                                 "clean_x": clean})
    return pd.DataFrame(rows)


GAPS = ((1.0, 1.5), (2.5, 3.0))


def plateau_data(rng: np.random.Generator, *, noise: float = 0.0, levels=(2, 6, 11), n_per: int = 20) -> pd.DataFrame:
    """Lifetimes 2, 6, 11 in log-norm blocks [0,1), [1.5,2.5), [3,4); ``noise`` = share moved by +-1."""
    blocks = ((0.0, 1.0), (1.5, 2.5), (3.0, 4.0))
    rows = []
    for level, (lo, hi) in zip(levels, blocks):
        for _ in range(n_per):
            jitter = int(rng.choice([-1, 0, 1], p=[noise / 2, 1 - noise, noise / 2])) if noise else 0
            i = len(rows)
            rows.append({"trace": f"t{i % 12}", "position": i, "mlp_out_norm": math.exp(rng.uniform(lo, hi)),
                         "lifetime": level + jitter, "censored": False})
    return pd.DataFrame(rows)


BASE = {"site": "blocks.4.hook_mlp_out", "factor": np.nan, "kl": np.nan, "delta_nll": np.nan, "suppressed": False,
        "sink_score": np.nan, "clean_sink_score": np.nan, "primary_sink_score": np.nan,
        "clean_primary_sink_score": np.nan}


def unit_rows(cond, kind, trace, pos, ctrl, il, clean_life, life, l0=4, **per_layer) -> list[dict]:
    """Effects long-format rows of one token under one condition, one per layer."""
    rows = []
    for layer in range(N_LAYERS):
        r = dict(BASE, condition=cond, kind=kind, intervened_layer=il, trace=trace, position=pos, is_control=ctrl,
                 layer=layer, clean_lifetime=clean_life, lifetime=life,
                 clean_is_sink=bool(clean_life and l0 <= layer < l0 + clean_life),
                 is_sink=bool(life and l0 <= layer < l0 + life))
        for k, v in per_layer.items():
            r[k] = v(layer) if callable(v) else v
        rows.append(r)
    return rows


def h1_rows(rng, n_traces=10, per_trace=3, p_prevent=0.9, placebo=False, p_placebo=0.0) -> pd.DataFrame:
    """Zero at l_start: targets are clean sinks lost with prob p_prevent; controls non-sinks (or placebo sinks)."""
    rows = []
    for t in range(n_traces):
        for k in range(per_trace):
            life = int(rng.integers(2, 7))
            rows += unit_rows(f"zero_{t}_{k}", "zero", f"t{t}", 100 + k, False, 4, life,
                              0 if rng.random() < p_prevent else life)
            clife = life if placebo else 0
            rows += unit_rows(f"zero_{t}_{k}", "zero", f"t{t}", 200 + k, True, 4, clife,
                              0 if (placebo and rng.random() < p_placebo) else clife)
    return pd.DataFrame(rows)


def h2_rows(rng, n_traces=10, per_trace=3, slope=3.0, noise=1.0) -> pd.DataFrame:
    """Scale by 2/5/10: target lifetime = base + slope*log(factor) + noise; controls stay non-sinks-ish."""
    rows = []
    for t in range(n_traces):
        for ctrl in (False, True):
            b = 0.0 if ctrl else slope
            for k in range(per_trace):
                base = 0 if ctrl else int(rng.integers(2, 5))
                for f in (2.0, 5.0, 10.0):
                    life = max(0, int(round(base + b * np.log(f) + rng.normal(0, noise))))
                    rows += unit_rows(f"scale_{f}", "scale", f"t{t}", 100 * (1 + int(ctrl)) + k, ctrl, 4, base, life,
                                      factor=f)
    return pd.DataFrame(rows)


def h3_rows(rng, n_traces=10, per_trace=4, layers=(1, 2, 3, 4), a=-2.5, b=0.9, control_rate=0.0) -> pd.DataFrame:
    """Mean swap at layer il: suppressed with prob logistic(a + b*il); controls at control_rate."""
    rows = []
    for t in range(n_traces):
        for k in range(per_trace):
            for il in layers:
                p = 1 / (1 + np.exp(-(a + b * il)))
                rows += unit_rows(f"swap_{il}", "mean_swap", f"t{t}", 100 + k, False, il, 5, 5,
                                  suppressed=bool(rng.random() < p))
                rows += unit_rows(f"swap_{il}", "mean_swap", f"t{t}", 200 + k, True, il, 0, 0,
                                  suppressed=bool(rng.random() < control_rate))
    return pd.DataFrame(rows)


def h4_rows(rng, n_traces=10, per_trace=3, shift=0.05, kl_t=0.2, kl_c=0.01) -> pd.DataFrame:
    """Attention mask: primary score shifts by ``shift`` in the target's sink layers 4-8; KL per token."""
    rows = []
    for t in range(n_traces):
        trace_noise = rng.normal(0, 0.01)
        for ctrl in (False, True):
            for k in range(per_trace):
                clean = 0.5 + rng.normal(0, 0.02, N_LAYERS)
                d = (0.0 if ctrl else shift) + trace_noise + rng.normal(0, 0.02, N_LAYERS)
                rows += unit_rows(f"mask_{t}_{k}", "attention_mask", f"t{t}", 100 * (1 + int(ctrl)) + k, ctrl, 4,
                                  0 if ctrl else 5, 0 if ctrl else 5,
                                  clean_primary_sink_score=lambda l, c=clean: c[l],
                                  primary_sink_score=lambda l, c=clean, dd=d: c[l] + (dd[l] if 4 <= l < 9 else 0.0),
                                  kl=abs(rng.normal(kl_c if ctrl else kl_t, 0.05)))
    return pd.DataFrame(rows)


def roundtrips(obj) -> bool:
    return json.loads(json.dumps(obj, allow_nan=False)) == obj


# ---------------------------------------------------------------------------------------------
# 1. norm -> score
# ---------------------------------------------------------------------------------------------


def test_norm_score_ci_coverage_and_bias():
    covered, estimates = [], []
    for i in range(200):
        r = fit_norm_score(norm_score_data(np.random.default_rng(5000 + i)), by_layer=False, mixed=False,
                           lack_of_fit=False)  # the slope CI only; the lack-of-fit check has its own tests
        covered.append(r["ci_low"] <= TRUE_SLOPE <= r["ci_high"])
        estimates.append(r["slope"])
    coverage = float(np.mean(covered))
    print(f"norm->score 95% CI coverage over 200 simulations: {coverage:.3f}; mean slope {np.mean(estimates):.4f}")
    assert 0.90 <= coverage <= 0.99
    assert abs(np.mean(estimates) - TRUE_SLOPE) < 0.03


def test_norm_score_full_result_per_layer_and_mixed():
    rng = np.random.default_rng(1)
    df = norm_score_data(rng, n_traces=25)
    # make layer 21 steeper: add 1.0 * centred log-norm there
    steep = df["layer"] == 21
    x = np.log(df.loc[steep, "mlp_out_norm"])
    df.loc[steep, "sink_score"] *= np.exp(1.0 * (x - 3.0))
    r = fit_norm_score(df)
    assert r["estimable"] and r["se_type"].startswith("CR2(trace)") and not r["degenerate"]
    assert r["n_sinks"] == len(df[["trace", "position"]].drop_duplicates())
    assert r["n_traces"] == 25 and 0 < r["r2"] <= 1
    assert r["mixed"]["run"] and r["mixed"]["slope"] == pytest.approx(r["slope"], abs=0.3)
    assert r["steepest_layer"] == 21 and "steepest_ci" not in r and "descriptive" in r["steepest_note"]
    assert {"layer", "slope", "ci_low", "ci_high", "p", "n_sinks"} <= set(r["per_layer"][0])
    assert roundtrips(r)


def test_norm_score_too_little_data_is_not_an_exception():
    df = norm_score_data(np.random.default_rng(2))
    two = df[(df["trace"] == "t0") & df["position"].isin([100, 101])]
    r = fit_norm_score(two)
    assert r["estimable"] is False and "need >= 3" in r["reason"]
    r = fit_norm_score(df.assign(mlp_out_norm=5.0))
    assert r["estimable"] is False and "single distinct" in r["reason"]
    r = fit_norm_score(df.iloc[:0])
    assert r["estimable"] is False
    r = fit_norm_score(df[df["trace"].isin(["t0", "t1"])])
    assert r["mixed"]["run"] is False  # < 3 traces: a note, not a failure
    with pytest.raises(ValueError, match="missing column"):
        fit_norm_score(df.drop(columns="primary_sink_score"))


# ---------------------------------------------------------------------------------------------
# 2. norm -> lifetime
# ---------------------------------------------------------------------------------------------


def test_lifetime_plateaus_recovered():
    r = fit_norm_lifetime(plateau_data(np.random.default_rng(3)))
    assert r["plateaus_estimable"] is True
    iso = r["isotonic"]
    assert [round(b["level"], 6) for b in iso["plateaus"]] == [2, 6, 11]
    for boundary, (lo, hi) in zip(iso["boundaries_log_norm"], GAPS):
        assert lo <= boundary <= hi
    seg = r["segmented"]
    assert seg["best"] == 2
    best = next(f for f in seg["fits"] if f["n_breakpoints"] == 2)
    for bp, (lo, hi) in zip(best["breakpoints"], GAPS):
        assert lo <= bp <= hi
    assert r["spearman"]["rho"] > 0.9 and r["spearman"]["p_perm"] < 0.001
    assert r["comparison"]["bic"]["linear"] > r["comparison"]["bic"]["segmented_2"]
    assert r["poisson"]["slope"] > 0
    assert roundtrips(r)


def test_lifetime_breakpoints_recovered_with_noise():
    r = fit_norm_lifetime(plateau_data(np.random.default_rng(4), noise=0.3, n_per=30))
    seg = r["segmented"]
    assert seg["best"] == 2
    best = next(f for f in seg["fits"] if f["n_breakpoints"] == 2)
    for bp, centre in zip(best["breakpoints"], (1.25, 2.75)):
        assert abs(bp - centre) <= 0.3
    means = [s["mean"] for s in best["segments"]]
    assert means == pytest.approx([2, 6, 11], abs=0.5)


def test_lifetime_single_or_two_values_cannot_estimate_plateaus():
    df = plateau_data(np.random.default_rng(5)).assign(lifetime=18)
    df.loc[:4, "censored"] = True
    r = fit_norm_lifetime(df)
    assert r["plateaus_estimable"] is False and "same lifetime" in r["plateaus_reason"]
    assert r.get("isotonic") is None and r.get("segmented") is None
    two = plateau_data(np.random.default_rng(5), levels=(2, 2, 11))
    r = fit_norm_lifetime(two)
    assert r["estimable"] is True and r["plateaus_estimable"] is False
    assert "2 distinct" in r["plateaus_reason"]
    assert roundtrips(r)


def test_lifetime_censoring_is_noted():
    df = plateau_data(np.random.default_rng(6))
    df.loc[df["lifetime"] == 11, "censored"] = True
    r = fit_norm_lifetime(df)
    assert r["n_censored"] == 20
    assert any("right-censored" in n for n in r["notes"])
    assert "uncensored_only" in r["poisson"]


# ---------------------------------------------------------------------------------------------
# 3. dose-response
# ---------------------------------------------------------------------------------------------


def test_dose_response_slopes_and_trend():
    rng = np.random.default_rng(7)
    rows = h2_rows(rng).drop_duplicates(["trace", "position", "factor"])
    df = rows[["trace", "position", "is_control", "factor", "lifetime"]].assign(
        token="tok", sink_score=lambda d: 0.01 * d["lifetime"] + rng.normal(0, 0.002, len(d)))
    r = dose_response(df, n_perm=999)
    t, c = r["targets"]["lifetime"], r["controls"]["lifetime"]
    assert t["ci_low"] <= 3.0 <= t["ci_high"]
    assert t["trend"]["p_perm"] < 0.01 and c["trend"]["p_perm"] > 0.05
    assert c["ci_low"] <= 0 <= c["ci_high"]
    assert r["difference"]["lifetime"]["ci_low"] > 0
    assert r["targets"]["sink_score"]["slope"] > 0
    assert roundtrips(r)
    tiny = dose_response(df[df["factor"] == 2.0])
    assert tiny["estimable"] is False


# ---------------------------------------------------------------------------------------------
# 4. per-layer effects
# ---------------------------------------------------------------------------------------------


def test_per_layer_null_calibration_and_holm():
    raw, adjusted = [], []
    for i in range(60):
        e = per_layer_effects(null_effects_data(np.random.default_rng(1000 + i)), "x", seed=i)
        raw += list(e["p"] < 0.05)
        adjusted += list(e["p_adj"] < 0.05)
    rate, rate_adj = float(np.mean(raw)), float(np.mean(adjusted))
    print(f"per-layer null rejection rate: raw {rate:.4f}, Holm {rate_adj:.4f} ({len(raw)} tests)")
    assert 0.02 <= rate <= 0.09
    assert sum(adjusted) < sum(raw)


def test_per_layer_effects_columns_planted_effect_and_p_independent_of_bootstrap():
    df = null_effects_data(np.random.default_rng(8), n_traces=12, planted={3: 2.0})
    e = per_layer_effects(df, ["x"], seed=0)
    assert list(e.columns[:14]) == ["condition", "measure", "layer", "n_targets", "n_traces", "effect", "ci_low",
                                    "ci_high", "ci_method", "control_effect", "did", "p", "p_adj", "correction"]
    row = e.set_index("layer").loc[3]
    assert row["p_adj"] < 0.05 and row["ci_low"] > 0 and row["did"] > 1.0
    assert row["n_targets"] == 36 and row["n_traces"] == 12
    assert set(e["ci_method"]) == {"sign_flip_inversion_exact"} and (e["p_method"] == "exact").all()
    # the interval inverts the test: it excludes 0 exactly when p < 0.05
    assert ((e["ci_low"] > 0) | (e["ci_high"] < 0)).tolist() == (e["p"] < 0.05).tolist()
    e2 = per_layer_effects(df, "x", seed=1)
    assert np.allclose(e["p"], e2["p"])  # exact enumeration at 12 traces: no seed dependence
    many = null_effects_data(np.random.default_rng(8), n_traces=16, n_layers=2)
    a, b = per_layer_effects(many, "x", seed=0), per_layer_effects(many, "x", seed=0)
    assert (a["p_method"] == "monte_carlo").all() and np.allclose(a["p"], b["p"])
    assert a["ci_method"].str.endswith("monte_carlo").all()
    bh = per_layer_effects(df, "x", correction="bh")
    assert (bh["p_adj"] <= e2["p_adj"] + 1e-12).all()
    alias = per_layer_effects(df, "x", correction="fdr_bh")  # statsmodels' spelling: the same adjustment
    assert (alias["correction"] == "bh").all()
    pd.testing.assert_series_equal(alias["p_adj"], bh["p_adj"])
    with pytest.raises(ValueError, match="unknown correction 'fdr'"):
        per_layer_effects(df, "x", correction="fdr")
    assert bh["p_did_adj"].notna().all() and (bh["p_did_adj"] >= bh["p_did"] - 1e-12).all()
    assert roundtrips(to_jsonable(e))


# ---------------------------------------------------------------------------------------------
# 5. compensation
# ---------------------------------------------------------------------------------------------


def test_compensation_valley_and_mask_effect():
    rng = np.random.default_rng(9)
    rows = []
    for t in range(15):
        for layer in range(40):
            base = 0.05 if layer < 2 else 0.8 - 0.5 * math.exp(-(((layer - 22) / 5) ** 2))
            rows.append({"trace": f"t{t}", "layer": layer, "primary_sink_score": base + rng.normal(0, 0.05)})
    sinks = pd.DataFrame({"trace": [f"t{i % 15}" for i in range(30)], "position": range(30),
                          "l_start": rng.choice([21, 22, 23], 30), "lifetime": rng.integers(2, 12, 30)})
    r = compensation(pd.DataFrame(rows), sinks, h4_rows(rng), n_boot=300)
    assert r["valley_layer"] in (21, 22, 23)  # not layer 0, where the BOS sink has not formed yet
    assert r["valley_in_l_start_range"] is True and r["valley_in_range_fraction"] > 0.9
    assert sum(r["valley_distribution"].values()) == pytest.approx(1.0)
    assert r["mask"]["effect"] > 0 and r["mask"]["ci_low"] > 0
    assert r["mask"]["layers"] == [4, 5, 6, 7, 8]
    assert roundtrips(r)


# ---------------------------------------------------------------------------------------------
# 6. verdicts
# ---------------------------------------------------------------------------------------------


def test_verdict_rule_cases():
    kw = {"n": 30, "n_traces": 10}
    assert verdict(0.001, 1.0, (0.5, 1.5), direction="increase", **kw) == "supported"
    assert verdict(0.001, -1.0, (-1.5, -0.5), direction="increase", **kw) == "not supported"
    assert verdict(0.6, 0.01, (-0.05, 0.07), direction="increase", margin=0.1, **kw) == "not supported"
    assert verdict(0.6, 0.01, (-0.5, 0.7), direction="increase", margin=0.1, **kw) == "inconclusive"
    assert verdict(0.001, -1.0, (-1.5, -0.5), direction="nonzero", **kw) == "supported"
    assert verdict(0.001, 1.0, (0.5, 1.5), direction="increase", n=3, n_traces=10) == "inconclusive"
    assert verdict(0.001, 1.0, (0.5, 1.5), direction="increase", n=30, n_traces=2) == "inconclusive"
    assert verdict(None, 1.0, (0.5, 1.5), direction="increase", **kw) == "inconclusive"
    assert verdict(0.2, 1.0, (0.5, 1.5), direction="increase", **kw) == "inconclusive"  # CI and p disagree
    assert judge(0.001, 1.0, (0.5, 1.5), direction="increase", **kw)["reason"]
    assert "supported if p < alpha" in VERDICT_RULE


def test_mask_primary_change_rules():
    df = h4_rows(np.random.default_rng(13))
    r = mask_primary_change(df, n_boot=100, by_layer=False)
    assert r["masked_rule"].startswith("layers where") and r["effect"] > 0
    r2 = mask_primary_change(df.assign(masked=df["layer"] == 5), n_boot=100, by_layer=False)
    assert r2["masked_rule"] == "masked column" and r2["layers"] == [5]


# ---------------------------------------------------------------------------------------------
# 7. JSON
# ---------------------------------------------------------------------------------------------


def test_to_jsonable_roundtrip():
    obj = {
        "a": np.float64(1.5), "b": np.int32(3), "c": np.bool_(True), "nan": float("nan"), "inf": np.inf,
        "arr": np.array([1.0, np.nan]), "nested": [{"x": np.float32(2.0)}, (1, 2)], 4: "int key",
        "df": pd.DataFrame({"x": [1.0, np.nan], "y": ["a", "b"], "z": [True, False]}), "na": pd.NA,
        "series": pd.Series({"k": np.int64(7)}),
    }
    out = to_jsonable(obj)
    assert out["nan"] is None and out["inf"] is None and out["arr"] == [1.0, None]
    assert out["df"] == [{"x": 1.0, "y": "a", "z": True}, {"x": None, "y": "b", "z": False}]
    assert out["4"] == "int key" and out["series"] == {"k": 7}
    assert roundtrips(out)
    with pytest.raises(TypeError):
        to_jsonable(object())


# ---------------------------------------------------------------------------------------------
# 8. small-sample inference: CR2 + Bell-McCaffrey, sign-flip inversion, exact zeros, degenerate
# ---------------------------------------------------------------------------------------------


def clustered_regression(rng: np.random.Generator, G: int = 8, slope: float = 0.5):
    """Unbalanced clusters (2..14 rows) whose x and errors share a cluster component: CR1 under-covers here."""
    sizes = rng.integers(2, 15, size=G)
    groups = np.repeat(np.arange(G), sizes)
    x = rng.normal(0, 1, G)[groups] + rng.normal(0, 0.5, groups.size)
    x[groups == 0] += 3.0  # one high-leverage trace
    u = rng.normal(0, 1, G)[groups] * (1 + np.abs(x)) + rng.normal(0, 0.5, groups.size)
    return 1.0 + slope * x + u, np.column_stack([np.ones(groups.size), x]), groups


def test_cr2_bell_mccaffrey_coverage_at_8_traces_beats_cr1():
    import statsmodels.api as sm
    from scipy import stats as sps

    from interventions.stats._regression import coef_summary, ols_clustered

    cr2, cr1 = [], []
    for i in range(400):
        y, X, groups = clustered_regression(np.random.default_rng(7000 + i))
        s = coef_summary(ols_clustered(y, X, groups, [])[0], 1, level=0.95)
        cr2.append(s["ci_low"] <= 0.5 <= s["ci_high"])
        r = sm.OLS(y, X).fit(cov_type="cluster", cov_kwds={"groups": groups})
        half = sps.t.ppf(0.975, 7) * r.bse[1]
        cr1.append(abs(r.params[1] - 0.5) <= half)
    c2, c1 = float(np.mean(cr2)), float(np.mean(cr1))
    print(f"G = 8 coverage of nominal 95%: CR2 + Bell-McCaffrey {c2:.3f}, CR1 + t(G-1) {c1:.3f}")
    # a hard design (one high-leverage trace, error sd growing with |x|): over 1,500 runs CR2 + BM covers
    # 0.925 and CR1 + t(G-1) about 0.69; with 400 runs the Monte Carlo sd is 0.013
    assert c2 >= 0.90 and c2 > c1 + 0.15


def test_cr2_reproduces_library_results():
    """HC2 (statsmodels) with singleton clusters; the one-sample t-test on cluster means (scipy) for
    balanced clusters; the equal-variance Welch-Satterthwaite df for a two-group difference."""
    import statsmodels.api as sm
    from scipy import stats as sps

    from interventions.stats._regression import coef_summary, ols_clustered

    rng = np.random.default_rng(21)
    n = 40
    X = sm.add_constant(rng.normal(size=n))
    y = X @ [1.0, 2.0] + rng.normal(size=n) * (1 + np.abs(X[:, 1]))
    fit, _ = ols_clustered(y, X, np.arange(n), [])
    assert np.allclose(fit.bse, sm.OLS(y, X).fit(cov_type="HC2").bse, rtol=1e-10)

    G, m = 8, 5
    groups = np.repeat(np.arange(G), m)
    y = rng.normal(size=G)[groups] + rng.normal(size=G * m) + 0.4
    s = coef_summary(ols_clustered(y, np.ones((G * m, 1)), groups, [])[0], 0, level=0.95)
    t = sps.ttest_1samp(y.reshape(G, m).mean(axis=1), 0.0)
    ci = t.confidence_interval(0.95)
    assert s["df"] == pytest.approx(G - 1, rel=1e-9) and s["p"] == pytest.approx(t.pvalue, rel=1e-9)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-9)

    n0, n1 = 6, 11
    y = np.r_[rng.normal(0, 1, n0), rng.normal(1, 3, n1)]
    X = np.column_stack([np.ones(n0 + n1), np.r_[np.zeros(n0), np.ones(n1)]])
    s = coef_summary(ols_clustered(y, X, np.arange(n0 + n1), [])[0], 1, level=0.95)
    welch_equal_var = (1 / n0 + 1 / n1) ** 2 / (1 / (n0**2 * (n0 - 1)) + 1 / (n1**2 * (n1 - 1)))
    assert s["df"] == pytest.approx(welch_equal_var, rel=1e-9)  # Imbens & Kolesar (2016), Sec. 4


def test_collapsed_sandwich_is_degenerate_with_no_p_or_ci():
    """Identical traces: every trace's logistic score sum is 0 at the MLE, so the cluster-robust
    variance collapses (the planted H3 trend's CI [0.2811308642786, 0.2811308642790], p 4e-86)."""
    import statsmodels.api as sm

    from interventions.stats._regression import coef_summary, glm_clustered

    one = [(1, 0), (1, 0), (1, 1), (2, 0), (2, 1), (2, 1), (3, 0), (3, 1), (3, 1), (4, 1), (4, 1), (4, 0)]
    layers = np.array([l for _ in range(8) for l, _ in one], float)
    y = np.array([s for _ in range(8) for _, s in one], float)
    groups = np.repeat(np.arange(8), len(one))
    fit, _ = glm_clustered(y, sm.add_constant(layers), groups, sm.families.Binomial(), [])
    s = coef_summary(fit, 1, level=0.95)
    assert s["degenerate"] and "collapsed" in s["degenerate_reason"]
    assert s["p"] is None and s["ci_low"] is None and s["ci_high"] is None and s["estimate"] > 0
    # the same outcomes with trace-to-trace variation are an ordinary estimate
    y2 = y.copy()
    y2[groups == 0] = 1 - y2[groups == 0]
    s2 = coef_summary(glm_clustered(y2, sm.add_constant(layers), groups, sm.families.Binomial(), [])[0], 1, level=0.95)
    assert not s2["degenerate"] and 0 < s2["p"] <= 1 and s2["ci_low"] < s2["estimate"] < s2["ci_high"]


def test_sign_flip_matches_scipy_and_interval_inverts_it():
    from scipy import stats as sps

    from interventions.stats._resampling import _all_signs, _flip_pvalues, sign_flip_interval, sign_flip_test

    rng = np.random.default_rng(22)
    S, N = rng.normal(0.6, 1.0, 9) * 3, rng.integers(1, 5, 9).astype(float)
    for mu in (0.0, 0.2, 0.5):
        ref = sps.permutation_test(((S - mu * N),), lambda x, axis: np.sum(x, axis=axis), vectorized=True,
                                   permutation_type="samples", n_resamples=np.inf).pvalue
        assert sign_flip_test(S - mu * N, rng=rng)[0] == pytest.approx(ref)
        assert _flip_pvalues(_all_signs(9), S, N, np.array([mu]), True)[0] == pytest.approx(ref)
    ci = sign_flip_interval(S, N, rng=rng)
    eps = 1e-6 * (ci["ci_high"] - ci["ci_low"])
    p = _flip_pvalues(_all_signs(9), S, N, np.array([ci["ci_low"] + eps, ci["ci_low"] - eps,
                                                     ci["ci_high"] - eps, ci["ci_high"] + eps]), True)
    assert p[0] > 0.05 >= p[1] and p[2] > 0.05 >= p[3]
    assert ci["ci_low"] < S.sum() / N.sum() < ci["ci_high"]
    few = sign_flip_interval(S[:5], N[:5], rng=rng)  # 2 / 2**5 > 0.05: no bounded interval exists
    assert few["ci_low"] is None and few["ci_high"] is None


def test_sign_flip_interval_coverage_at_8_traces():
    from interventions.stats.effects import trace_mean_test

    covered = []
    for i in range(300):
        rng = np.random.default_rng(9000 + i)
        N = rng.integers(1, 6, 8).astype(float)
        S = N * 0.3 + rng.standard_t(3, 8) * np.sqrt(N)
        r = trace_mean_test(S, N, rng=rng)
        covered.append(r["ci_low"] <= 0.3 <= r["ci_high"])
    coverage = float(np.mean(covered))
    print(f"sign-flip inversion coverage at G = 8 (t3 errors): {coverage:.3f}")
    assert 0.93 <= coverage <= 0.99


def prefix_noise_rows(rng, *, n_traces=8, n_layers=6, edit=3, shift=0.2) -> pd.DataFrame:
    """Per-layer rows where layers before ``edit`` differ from clean only by ~1e-10 (prefix-reuse noise)."""
    rows = []
    for t in range(n_traces):
        for ctrl in (False, True):
            for k in range(3):
                for layer in range(n_layers):
                    clean = 0.05 + rng.uniform(0, 0.5)
                    if layer < edit:
                        value = clean + rng.normal(0, 1e-10)
                    elif layer == edit:
                        value = clean  # the edit cannot reach this measure here: an exact null
                    else:
                        value = clean + (0.0 if ctrl else shift) + rng.normal(0, 0.05)
                    rows.append({"condition": "mlp_zero", "trace": t, "position": 10 + k + 100 * int(ctrl),
                                 "is_control": ctrl, "layer": layer, "intervened_layer": edit,
                                 "sink_score": value, "clean_sink_score": clean})
    return pd.DataFrame(rows)


def test_exact_zero_has_no_ci_and_holm_family_starts_at_the_edit():
    from statsmodels.stats.multitest import multipletests

    e = per_layer_effects(prefix_noise_rows(np.random.default_rng(23)), "sink_score", seed=0).set_index("layer")
    for layer in (0, 1, 2):  # before the edit: ~1e-10 noise snapped to an exact 0
        row = e.loc[layer]
        assert row["effect"] == 0.0 and row["exact_zero"] and row["pre_edit"] and not row["in_family"]
        assert np.isnan(row["p"]) and np.isnan(row["ci_low"]) and np.isnan(row["ci_high"]) and np.isnan(row["p_adj"])
    row = e.loc[3]  # at the edit, nothing changed: exact zero, untested
    assert row["exact_zero"] and not row["pre_edit"] and np.isnan(row["p"]) and np.isnan(row["p_adj"])
    tested = e.loc[[4, 5]]
    assert tested["in_family"].all() and (tested["ci_low"] > 0).all()
    assert np.allclose(tested["p_adj"], multipletests(tested["p"], method="holm")[1])
    assert np.allclose(tested["p_did_adj"], multipletests(tested["p_did"], method="holm")[1])
    assert roundtrips(to_jsonable(e.reset_index()))
    js = to_jsonable(e.reset_index().to_dict(orient="records"))
    assert js[0]["p"] is None and js[0]["ci_low"] is None and js[0]["effect"] == 0.0


def test_zero_variance_effect_is_degenerate():
    from interventions.stats.effects import trace_mean_test

    r = trace_mean_test(np.full(8, -3.0), np.full(8, 3.0), rng=np.random.default_rng(0))
    assert r["degenerate"] and r["estimate"] == -1.0 and r["p"] is None and r["ci_low"] is None
    z = trace_mean_test(np.zeros(8), np.full(8, 3.0), rng=np.random.default_rng(0))
    assert z["exact_zero"] and z["estimate"] == 0.0 and z["p"] is None and z["ci_high"] is None


def test_dose_response_exact_zero_control_slope_has_no_ci():
    """Controls whose score moves by 1e-17 across factors (float noise): slope exactly 0, no CI/p
    (the report printed 4.65e-17 with CI [4.7e-18, 8.8e-17], p 0.034)."""
    rng = np.random.default_rng(24)
    rows = h2_rows(rng).drop_duplicates(["trace", "position", "factor"])
    df = rows[["trace", "position", "is_control", "factor", "lifetime"]].assign(token="tok")
    df["sink_score"] = np.where(df["is_control"], 6e-4 + 1e-17 * np.log(df["factor"]) * rng.uniform(0.5, 1.5, len(df)),
                                0.01 * df["lifetime"] + rng.normal(0, 0.002, len(df)))
    r = dose_response(df, n_perm=99)
    c = r["controls"]["sink_score"]
    assert c["exact_zero"] and c["slope"] == 0.0 and c["p"] is None and c["ci_low"] is None
    t = r["targets"]["sink_score"]
    assert not t["exact_zero"] and t["p"] < 0.05 and t["df"] > 0
    assert r["difference"]["sink_score"]["slope_difference"] == pytest.approx(t["slope"], rel=1e-6)
    assert roundtrips(r)


def test_mixed_model_that_did_not_converge_has_no_p(monkeypatch):
    import statsmodels.regression.mixed_linear_model as mlm

    fit = mlm.MixedLM.fit

    def not_converged(self, *a, **k):
        res = fit(self, *a, **k)
        res.converged = False
        return res

    monkeypatch.setattr(mlm.MixedLM, "fit", not_converged)
    r = fit_norm_score(norm_score_data(np.random.default_rng(25), n_traces=8), by_layer=False)
    m = r["mixed"]
    assert m["converged"] is False and m["degenerate"] and m["p"] is None and m["ci_low"] is None
    assert m["slope"] is not None and r["p"] is not None  # the pooled CR2 fit is unaffected


def test_norm_score_fixed_window_keeps_dead_layers():
    """Every sink contributes layers l_start+1 .. l_start+window, alive or dead; rows outside drop."""
    rng = np.random.default_rng(26)
    rows = []
    for t in range(10):
        for s in range(4):
            log_norm, l0 = rng.normal(3, 0.7), int(rng.integers(3, 6))
            life = 1 + int(log_norm > 3)  # survivors at late layers have high norms
            for layer in range(l0 + 1, 14):
                alive = layer - 1 < l0 + life
                y = -2 + 0.8 * log_norm + rng.normal(0, 0.2) - (0.0 if alive else 1.5)
                rows.append({"trace": t, "position": 100 + s, "l_start": l0, "layer": layer, "alive": alive,
                             "mlp_out_norm": math.exp(log_norm), "sink_score": 0.5 * math.exp(y),
                             "primary_sink_score": 0.5})
    df = pd.DataFrame(rows)
    r = fit_norm_score(df, by_layer=False, mixed=False, window=4)
    assert r["window"] == 4 and r["n_rows"] == 40 * 4 and r["n_dead_rows"] > 0
    assert r["se_type"].startswith("CR2") and r["ci_low"] < r["slope"] < r["ci_high"]
    legacy = fit_norm_score(df[df["alive"]].drop(columns="alive"), by_layer=False, mixed=False)
    assert any("survivor selection" in n for n in legacy["notes"])


def test_isotonic_matches_pava_and_bic_has_a_noise_floor():
    from scipy.optimize import isotonic_regression

    from interventions.stats._isotonic import isotonic_blocks
    from interventions.stats.fits import LIFETIME_NOISE_VAR

    rng = np.random.default_rng(27)
    x, y = rng.uniform(0, 4, 60), rng.integers(0, 12, 60).astype(float)
    fitted = np.empty(60)
    for b in isotonic_blocks(x, y):
        fitted[(x >= b["x_low"]) & (x <= b["x_high"])] = b["level"]
    order = np.argsort(x)
    assert np.allclose(fitted[order], isotonic_regression(y[order]).x)
    r = fit_norm_lifetime(plateau_data(np.random.default_rng(3)))  # exact steps: isotonic SSE is 0
    n, k = 60, len(r["isotonic"]["blocks"]) + 1
    assert r["isotonic"]["bic"] == pytest.approx(n * math.log(LIFETIME_NOISE_VAR) + k * math.log(n))
    assert all(np.isfinite(v) for v in r["comparison"]["bic"].values())
    assert r["comparison"]["noise_floor_var"] == LIFETIME_NOISE_VAR


def test_a_significant_effect_inside_the_margin_is_negligible_not_supported():
    """p < alpha with the whole CI inside +-margin: equivalent to no effect (two one-sided tests), so
    "not supported (significant but negligible)"; the same numbers with no margin declared are supported."""
    r = judge(0.001, 0.002, (0.001, 0.003), direction="increase", margin=0.01, n=50, n_traces=8)
    assert r["verdict"] == "not supported" and "negligible" in r["reason"]
    assert judge(0.001, 0.002, (0.001, 0.003), direction="increase", margin=None, n=50,
                 n_traces=8)["verdict"] == "supported"
    assert judge(0.001, 0.02, (0.005, 0.03), direction="increase", margin=0.01, n=50,
                 n_traces=8)["verdict"] == "supported"     # CI reaches past the margin: a real effect


def test_one_adjustment_helper_maps_names_to_statsmodels_and_keeps_nan():
    from statsmodels.stats.multitest import multipletests

    from interventions.stats._common import adjust

    p = np.array([0.01, np.nan, 0.04, 0.03, 0.2])
    ok = np.isfinite(p)
    for name, method in (("holm", "holm"), ("bh", "fdr_bh"), ("fdr_bh", "fdr_bh"), ("bonferroni", "bonferroni")):
        out = adjust(p, name)
        assert np.isnan(out[1]) and np.allclose(out[ok], multipletests(p[ok], method=method)[1])
    assert np.allclose(adjust(p, "bh")[ok], [0.04, 0.16 / 3, 0.16 / 3, 0.2])  # by hand: min over j >= i of p_(j) m / j
    assert np.array_equal(adjust(p, "none"), p, equal_nan=True)


def test_bca_interval_of_several_samples_reduces_to_one_sample_and_uses_each_jackknife():
    """``interval`` with a list of jackknife arrays (runs resampled independently) is the
    multi-sample BCa: one sample in a list is the one-sample interval; a second sample's skew moves it."""
    from interventions.stats._resampling import interval

    rng = np.random.default_rng(3)
    boot = rng.gamma(2.0, size=4000)
    observed = float(np.median(boot))
    jack_a = rng.normal(size=8)
    assert interval(boot, observed, [jack_a]) == interval(boot, observed, jack_a)
    one = interval(boot, observed, [jack_a, np.zeros(8)])
    skewed = interval(boot, observed, [jack_a, rng.gamma(0.5, size=8)])
    assert one[2] == skewed[2] == "bca" and one[:2] != skewed[:2]
    # two samples by hand: a = sum U^3 / n^3 / (6 (sum U^2 / n^2)^1.5), U = (n - 1)(mean - jack)
    from scipy import stats as st

    jb = rng.gamma(0.5, size=6)
    u = [(j.size - 1) * (j.mean() - j) for j in (jack_a, jb)]
    a = sum(np.sum(x**3) / x.size**3 for x in u) / (6 * sum(np.sum(x**2) / x.size**2 for x in u) ** 1.5)
    z0 = st.norm.ppf((np.sum(boot < observed) + 0.5 * np.sum(boot == observed)) / boot.size)
    z = st.norm.ppf([0.025, 0.975])
    expected = np.quantile(boot, st.norm.cdf(z0 + (z0 + z) / (1 - a * (z0 + z))))
    assert np.allclose(interval(boot, observed, [jack_a, jb])[:2], expected)
    assert interval(boot, observed, [jack_a, jb[:4]])[2] == "percentile"  # a run of 4 traces: too few for BCa
