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
    h1_zero_prevents,
    h2_scaling_grows,
    h3_swap_suppresses,
    h4_mask_changes,
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
        r = fit_norm_score(norm_score_data(np.random.default_rng(5000 + i)), by_layer=False, mixed=False)
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
    assert r["estimable"] and r["se_type"] == "cluster(trace)"
    assert r["n_sinks"] == len(df[["trace", "position"]].drop_duplicates())
    assert r["n_traces"] == 25 and 0 < r["r2"] <= 1
    assert r["mixed"]["run"] and r["mixed"]["slope"] == pytest.approx(r["slope"], abs=0.3)
    assert r["steepest_layer"] == 21
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
    for i in range(200):
        e = per_layer_effects(null_effects_data(np.random.default_rng(1000 + i)), "x", n_boot=20, seed=i)
        raw += list(e["p"] < 0.05)
        adjusted += list(e["p_adj"] < 0.05)
    rate, rate_adj = float(np.mean(raw)), float(np.mean(adjusted))
    print(f"per-layer null rejection rate: raw {rate:.4f}, Holm {rate_adj:.4f} ({len(raw)} tests)")
    assert 0.02 <= rate <= 0.09
    assert sum(adjusted) < sum(raw)


def test_per_layer_effects_columns_planted_effect_and_p_independent_of_bootstrap():
    df = null_effects_data(np.random.default_rng(8), n_traces=12, planted={3: 2.0})
    e = per_layer_effects(df, ["x"], n_boot=200, seed=0)
    assert list(e.columns[:14]) == ["condition", "measure", "layer", "n_targets", "n_traces", "effect", "ci_low",
                                    "ci_high", "ci_method", "control_effect", "did", "p", "p_adj", "correction"]
    row = e.set_index("layer").loc[3]
    assert row["p_adj"] < 0.05 and row["ci_low"] > 0 and row["did"] > 1.0
    assert row["n_targets"] == 36 and row["n_traces"] == 12
    assert set(e["ci_method"]) <= {"bca", "percentile"}
    e2 = per_layer_effects(df, "x", n_boot=30, seed=0)
    assert np.allclose(e["p"], e2["p"])  # p does not depend on the bootstrap (exact flips, 12 traces)
    many = null_effects_data(np.random.default_rng(8), n_traces=16, n_layers=2)
    a, b = per_layer_effects(many, "x", n_boot=10), per_layer_effects(many, "x", n_boot=50)
    assert (a["p_method"] == "monte_carlo").all() and np.allclose(a["p"], b["p"])
    bh = per_layer_effects(df, "x", n_boot=30, correction="bh")
    assert (bh["p_adj"] <= e2["p_adj"] + 1e-12).all()
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


HYPOTHESES = {
    "h1": (h1_zero_prevents, h1_rows),
    "h2": (h2_scaling_grows, h2_rows),
    "h3": (h3_swap_suppresses, h3_rows),
    "h4": (h4_mask_changes, h4_rows),
}
NULLS = {
    "h1": lambda rng: h1_rows(rng, p_prevent=0.0),  # zeroing changes nothing
    "h2": lambda rng: h2_rows(rng, slope=0.0),
    "h3": lambda rng: h3_rows(rng, a=math.log(0.15 / 0.85), b=0.0, control_rate=0.15),
    "h4": lambda rng: h4_rows(rng, shift=0.0, kl_t=0.1, kl_c=0.1),
}
FAST = {"h1": {"n_boot": 200}, "h2": {"n_perm": 99}, "h3": {"n_boot": 200}, "h4": {"n_boot": 200, "by_layer": False}}
KEYS = {"hypothesis", "test", "alpha", "effect", "ci", "p", "n", "verdict", "rule"}


@pytest.mark.parametrize("name", sorted(HYPOTHESES))
def test_planted_effect_is_supported(name):
    fn, gen = HYPOTHESES[name]
    r = fn(gen(np.random.default_rng(10)), **FAST[name])
    assert KEYS <= set(r)
    assert r["verdict"] == "supported", r["reason"]
    assert roundtrips(r)


@pytest.mark.parametrize("name", sorted(HYPOTHESES))
def test_null_is_never_supported(name):
    fn = HYPOTHESES[name][0]
    verdicts = [fn(NULLS[name](np.random.default_rng(200 + i)), seed=i, **FAST[name])["verdict"] for i in range(50)]
    assert "supported" not in verdicts


def test_h1_noisy_placebo_null_false_support_rate():
    """Targets and placebo controls lose sink status at the same 15% rate: supported at most ~alpha/2."""
    verdicts = [h1_zero_prevents(h1_rows(np.random.default_rng(300 + i), p_prevent=0.15, placebo=True,
                                         p_placebo=0.15), seed=i, n_boot=100)["verdict"] for i in range(100)]
    assert verdicts.count("supported") <= 5


@pytest.mark.parametrize("name", sorted(HYPOTHESES))
def test_too_small_n_is_inconclusive(name):
    fn, gen = HYPOTHESES[name]
    r = fn(gen(np.random.default_rng(11), n_traces=2, per_trace=2), **FAST[name])
    assert r["verdict"] == "inconclusive"


def test_statsmodels_warnings_become_notes():
    df = h3_rows(np.random.default_rng(12))
    targets = ~df["is_control"]
    df.loc[targets, "suppressed"] = df.loc[targets, "intervened_layer"] >= 3  # perfect separation
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = h3_swap_suppresses(df, n_boot=100)
    assert not caught
    assert any("separation" in n.lower() for n in r["notes"])
    assert r["components"][1]["verdict"] == "inconclusive"


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


def test_own_holm_bh_match_statsmodels():
    from statsmodels.stats.multitest import multipletests

    from interventions.stats.effects import adjust

    p = np.random.default_rng(14).uniform(size=25) ** 3
    for ours, theirs in (("holm", "holm"), ("bh", "fdr_bh"), ("bonferroni", "bonferroni")):
        assert np.allclose(adjust(p, ours), multipletests(p, method=theirs)[1])
