"""The built-in hypothesis measures: one value per unit of one arm, from a run's effects rows.

Each function takes the effects rows of one arm (``target``, ``placebo`` or ``controls``) and
returns ``DataFrame[condition, trace, position, value, unit]``, where ``unit`` names what makes
the unit independent (the hash of the tokens it saw: two traces sharing a templated prefix give
the same unit). Registering them here puts them in :data:`interventions.spec.outcomes.OUTCOMES`
with the arms that can decide them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interventions.spec.outcomes import Outcome, register_outcome

KEYS = ["condition", "trace", "position"]
COLUMNS = KEYS + ["value", "unit"]


def _empty() -> pd.DataFrame:
    return pd.DataFrame(columns=COLUMNS)


def _unit_of(rows: pd.DataFrame) -> pd.Series:
    """Per row: what identifies its unit across traces (the prefix hash when the run wrote it)."""
    if "prefix_hash" in rows.columns:
        return rows["prefix_hash"].astype(str)
    return rows["trace"].astype(str) + ":" + rows["position"].astype(str)


def _per_unit(rows: pd.DataFrame, keys: list[str], **agg) -> pd.DataFrame:
    if rows.empty:
        return pd.DataFrame(columns=keys + list(agg) + ["unit"])
    rows = rows.assign(unit=_unit_of(rows))
    return rows.groupby(keys, sort=True).agg(unit=("unit", "first"), **agg).reset_index()


def _clean_sinks(u: pd.DataFrame) -> pd.DataFrame:
    return u[u["was"].fillna(0) > 0]


# --------------------------------------------------------------------------------------------
# H1: sink status of clean sinks


def sink_rate_change(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per clean-sink unit: is it still a sink (1) or not (0), minus 1 (so lost = -1, kept = 0)."""
    if rows.empty:
        return _empty()
    u = _clean_sinks(_per_unit(rows, KEYS, was=("clean_lifetime", "max"), now=("lifetime", "max")))
    return u.assign(value=(u["now"].fillna(0) > 0).astype(float) - 1.0)[COLUMNS]


register_outcome(Outcome(
    name="sink_rate_change", kind="zero", direction="decrease", margin=0.10,
    meaning="change in the share of clean-sink targets that are still sinks (edited - clean)",
    comparisons=("placebo",),
    why_not={"controls": "non-sink controls can only gain sink status while clean-sink targets can only lose it, "
                         "so 'targets lost more' holds for any edit that perturbs",
             "clean": "clean sinks can only lose their status, so any perturbation reads as an effect"},
    units=sink_rate_change))


# --------------------------------------------------------------------------------------------
# H2: lifetime against log(norm factor), non-sinks (lifetime 0) included


def _dose(rows: pd.DataFrame) -> pd.Series:
    """The dose of each row: the scale factor, or for a noise placebo the factor it is matched to."""
    factor = rows["factor"] if "factor" in rows.columns else pd.Series(np.nan, index=rows.index)
    if "matched_factor" in rows.columns:
        factor = factor.fillna(rows["matched_factor"])
    return factor.astype(float)


def lifetime_slope(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per token: OLS slope of lifetime on log(dose) over its doses and the clean run (dose 1).

    A token that is no sink in the clean run keeps every dose, lifetime 0 included: it stays a non-sink at
    every dose (slope 0, evidence against the claim, not a missing value) or becomes one as the norm grows.
    A clean sink keeps the doses at which it is still a sink: for it the claim is about how long it lives,
    and a sink that a smaller norm pushes just below the 0.95 threshold says where the threshold is, not that
    the norm sets the lifetime (a testbed whose lifetimes ignore the norm would otherwise pass).
    """
    if rows.empty:
        return _empty()
    rows = rows.assign(dose=_dose(rows)).dropna(subset=["dose"])
    u = _per_unit(rows, ["trace", "position", "dose"], lifetime=("lifetime", "max"), clean=("clean_lifetime", "max"))
    out = []
    for (trace, pos), g in u.groupby(["trace", "position"]):
        doses = g["dose"].to_numpy(float)
        lifetimes = g["lifetime"].fillna(0).to_numpy(float)
        if float(g["clean"].fillna(0).iloc[0]) > 0:
            doses, lifetimes = doses[lifetimes > 0], lifetimes[lifetimes > 0]
        if not np.isclose(doses, 1.0).any():
            doses = np.append(doses, 1.0)
            lifetimes = np.append(lifetimes, float(g["clean"].fillna(0).iloc[0]))
        if np.unique(doses).size >= 2:
            out.append({"condition": "*", "trace": trace, "position": pos, "unit": g["unit"].iloc[0],
                        "value": float(np.polyfit(np.log(doses), lifetimes, 1)[0])})
    return pd.DataFrame(out, columns=COLUMNS)


register_outcome(Outcome(
    name="lifetime_slope", kind="scale", direction="increase", margin=0.5,
    meaning="within-token slope of lifetime on log(factor) and the clean run (a non-sink's every factor, lifetime 0 "
            "included; a clean sink's factors where it is still a sink)",
    comparisons=("placebo",),
    why_not={"controls": "matched non-sink controls scaled up can only gain lifetime, and targets that are "
                         "non-sinks can only gain it too: a difference of two one-way arms decides nothing",
             "clean": "a non-sink scaled up can only gain lifetime, so the slope against the clean run cannot "
                      "come out negative; compare with a magnitude-matched noise placebo"},
    units=lifetime_slope))


# --------------------------------------------------------------------------------------------
# H3: mean swap before l_start


def _before_l_start(rows: pd.DataFrame) -> pd.DataFrame:
    """Rows of clean sinks edited strictly before their l_start (the claim is about swaps before the sink forms)."""
    return rows[(rows["intervened_layer"] < rows["clean_l_start"]) & (rows["clean_lifetime"].fillna(0) > 0)]


def suppression_rate(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per (condition, clean-sink unit) edited before its l_start: suppressed (1) or not (0)."""
    if rows.empty:
        return _empty()
    u = _per_unit(_before_l_start(rows), KEYS, value=("suppressed", "max"))
    return u.assign(value=u["value"].astype(float))[COLUMNS]


def suppression_trend(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per trace: OLS slope of 'suppressed' on the swap layer over its (clean sink, layer < l_start) pairs."""
    if rows.empty:
        return _empty()
    u = _per_unit(_before_l_start(rows), ["trace", "position", "intervened_layer"], value=("suppressed", "max"))
    out = []
    for trace, g in u.groupby("trace"):
        x, y = g["intervened_layer"].to_numpy(float), g["value"].astype(float).to_numpy()
        if np.unique(x).size >= 2:
            out.append({"condition": "*", "trace": trace, "position": -1, "unit": "|".join(sorted(set(g["unit"]))),
                        "value": float(np.polyfit(x, y, 1)[0])})
    return pd.DataFrame(out, columns=COLUMNS)


_SWAP_WHY = {"controls": "non-sink controls cannot be suppressed (they are no sink to lose), so the control rate "
                         "is 0 by construction",
             "clean": "a clean sink can only be suppressed, never become more of a sink, so any perturbation "
                      "reads as suppression"}
register_outcome(Outcome(
    name="suppression_rate", kind="mean_swap", direction="increase", margin=0.05,
    meaning="share of (future sink, swap layer < l_start) pairs that are no sink after the edit",
    comparisons=("placebo",), why_not=_SWAP_WHY, units=suppression_rate))
register_outcome(Outcome(
    name="suppression_trend", kind="mean_swap", direction="increase", margin=0.01,
    meaning="within-trace slope of the suppression rate on the swap layer before l_start (per layer; positive: "
            "swaps nearer l_start suppress more)",
    comparisons=("placebo",), why_not=_SWAP_WHY, units=suppression_trend, per="trace"))


# --------------------------------------------------------------------------------------------
# H4: masking attention to secondary sinks


def _trace_unit(g: pd.DataFrame) -> str:
    return "|".join(sorted(set(_unit_of(g)))) if len(g) else ""


def primary_beyond_renormalisation(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per (condition, trace): edited primary sink score minus the arithmetic prediction, from the first masked
    layer on (the prediction where this forward masks, the clean score in the layers after its masks)."""
    if rows.empty or "renorm_primary_sink_score" not in rows.columns:
        return _empty()
    out = []
    for (cond, trace), g in rows.groupby(["condition", "trace"]):
        per_layer = g.groupby("layer").agg(observed=("primary_sink_score", "first"),
                                           clean=("clean_primary_sink_score", "first"),
                                           predicted=("renorm_primary_sink_score", "max"))
        masked = per_layer["predicted"].notna()
        if not masked.any():
            continue
        span = per_layer[per_layer.index >= per_layer.index[masked.to_numpy()].min()]
        expected = span["predicted"].where(span["predicted"].notna(), span["clean"])
        out.append({"condition": cond, "trace": trace, "position": -1, "unit": _trace_unit(g),
                    "value": float((span["observed"] - expected).mean())})
    return pd.DataFrame(out, columns=COLUMNS)


def primary_score_after_mask(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per (condition, trace): change of the primary sink score in the layers after the last masked layer."""
    if rows.empty:
        return _empty()
    out = []
    for (cond, trace), g in rows.groupby(["condition", "trace"]):
        masked = g.loc[g["masked"].astype(bool), "layer"] if "masked" in g.columns else pd.Series(dtype=int)
        if masked.empty:
            continue
        after = g[g["layer"] > masked.max()].drop_duplicates("layer")
        if len(after):
            out.append({"condition": cond, "trace": trace, "position": -1, "unit": _trace_unit(g),
                        "value": float((after["primary_sink_score"] - after["clean_primary_sink_score"]).mean())})
    return pd.DataFrame(out, columns=COLUMNS)


def kl(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Per target unit: mean KL(clean || edited) of the next-token predictions from the target on.

    A mass-matched control *set* (rows sharing ``control_of``, masked together) is one unit, at its target's
    position: the KL from its first member on (where the set's masks start to act), the row of that member.
    """
    if rows.empty:
        return _empty()
    rows = rows.dropna(subset=["kl"])
    if arm == "controls" and "control_of" in rows.columns and (rows["control_of"].fillna(-1) >= 0).any():
        sets = rows["control_of"].fillna(-1) >= 0
        first = rows[sets].groupby(["condition", "trace", "control_of"])["position"].transform("min")
        in_set = rows[sets][rows[sets]["position"] == first]
        rows = pd.concat([rows[~sets], in_set.assign(position=in_set["control_of"].astype(int))])
    u = _per_unit(rows, KEYS, value=("kl", "mean"))
    return u[COLUMNS]


register_outcome(Outcome(
    name="primary_beyond_renormalisation", kind="attention_mask", direction="increase", margin=0.01,
    meaning="change of the primary sink score beyond what the mask does by arithmetic alone, from the first masked "
            "layer on (edited minus the renormalisation prediction from the clean attention in masked layers, minus "
            "the clean score after them)",
    comparisons=("controls", "clean"), units=primary_beyond_renormalisation, per="trace",
    fixed_by_prefix=False))
register_outcome(Outcome(
    name="primary_score_after_mask", kind="attention_mask", direction="nonzero", margin=0.01,
    meaning="change of the primary sink score in the layers after the last masked layer",
    comparisons=("controls", "clean"), units=primary_score_after_mask, per="trace",
    fixed_by_prefix=False))
register_outcome(Outcome(
    name="kl", kind="attention_mask", direction="increase", margin=0.01,
    meaning="mean KL(clean || edited) of next-token predictions",
    comparisons=("controls",),
    why_not={"clean": "KL is never negative, so against the clean run any perturbation reads as an effect",
             "placebo": "a placebo mask on other tokens is what mass-matched controls are; declare controls"},
    units=kl, fixed_by_prefix=False))
