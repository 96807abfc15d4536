"""The verdict path: one verdict per (declared hypothesis, condition family), each against an arm that can
move both ways, with the number of independent units it rests on, and Holm across the run's families.

``intervene run``, ``intervene stats`` and :func:`interventions.analyze_run` all reach verdicts
through :func:`hypothesis_verdicts`, and so do the calibration benchmark and the table-level null
tests: there is no other implementation. What this module decides, and where it asks:

* which conditions a hypothesis is about: the hypothesis' selector (:mod:`interventions.spec.hypotheses`);
* how they group into families: each kind's :meth:`~interventions.spec.conditions.InterventionBase.family_key`
  (site, layer rule and target sets by default, so two target sets never pool);
* which rows are tautological: kinds with ``TAUTOLOGICAL_AT_L_START`` editing ``block_output`` at the
  target's own clean l_start;
* the value of a unit and the arms that can decide it: the measure (:mod:`interventions.spec.outcomes`,
  built-ins in :mod:`interventions.stats.outcomes`);
* the estimate and the rule: :mod:`interventions.stats.verdicts`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from interventions.spec.target_sets import mass_caliper

from ._common import adjust
from .verdicts import (ALPHA, VERDICT_RULE, exact_tol_for, family_component, family_report, min_traces_for,
                       untestable_component)

ARM_HINTS = {
    "placebo": "add placebo: {edit: noise} to the hypothesis (a magnitude-matched random edit at the same site, "
               "layer and targets)",
    "controls": "add controls: <matched set> to the intervention (for masks: matched_controls by attention_mass)",
    "clean": "",
}


def conditions_of(manifest: dict, effects: pd.DataFrame) -> list[dict]:
    """The run's conditions (``Condition.to_dict()``) from its manifest, or rebuilt from effects rows."""
    conds = manifest.get("conditions")
    if conds:
        return conds
    if effects.empty:
        return []
    first = effects.drop_duplicates("condition")
    return [{"id": r.condition, "kind": r.kind, "site": r.site or None, "layer": getattr(r, "intervened_layers", ""),
             "redirect": getattr(r, "redirect", None) or None, "targets": [getattr(r, "target_set", "")],
             "controls": None, "params": {}} for r in first.itertuples()]


def hypotheses_of(manifest: dict) -> list:
    """The hypotheses the run's spec declares, or the registered defaults."""
    from interventions.spec.hypotheses import Hypothesis, default_hypotheses

    declared = (manifest.get("spec") or {}).get("hypotheses") or []
    return [Hypothesis.model_validate(h) for h in declared] if declared else default_hypotheses()


def tautological_rows(d: pd.DataFrame) -> pd.Series:
    """Rows whose sink measures hold by construction: a kind that declares ``TAUTOLOGICAL_AT_L_START`` edited
    the whole hidden state (block_output) of the target at its own clean l_start."""
    from interventions.spec.conditions import kinds_with

    if d.empty:
        return pd.Series(False, index=d.index)
    tautological_kinds = kinds_with("TAUTOLOGICAL_AT_L_START")
    site = d["site"].fillna("") if "site" in d.columns else pd.Series("", index=d.index)
    return d["kind"].isin(tautological_kinds) & (site == "block_output") & (d["intervened_layer"] == d["clean_l_start"])


def hypothesis_verdicts(effects: pd.DataFrame, manifest: dict, *, seed: int = 0) -> tuple[dict, list[dict]]:
    """Every declared (or default H1-H4) hypothesis, one verdict per condition family.

    Returns ``(verdicts, tautologies)``. Verdicts are keyed by the hypothesis id when it has one
    family in the run, else ``<id>/<family>``; a hypothesis with no condition in the run is
    "not tested". Each record names its conditions, the arm it was compared with and that arm's
    conditions, its numbers of traces and of independent units, the rows left out as
    tautological, and ``p_holm`` / ``verdict_holm``: the verdict after a Holm adjustment over every
    family of the run that has a p (valid under any dependence between families).
    """
    from interventions.spec.conditions import KINDS, kinds_with
    from interventions.spec.outcomes import OUTCOMES

    conditions = conditions_of(manifest, effects)
    d = effects.copy()
    if len(d):
        d["is_control"] = d["is_control"].astype(bool)
        if "suppressed" in d.columns:
            d["suppressed"] = d["suppressed"].astype(bool)
    taut = tautological_rows(d) if len(d) else pd.Series(dtype=bool)
    tautologies = [{"condition": cid, "n_rows": int(len(g)), "reason": (
        "edits the whole hidden state (block_output) of the target at its own l_start, where its sink status "
        "is read: it removes the sink by construction; left out of every verdict")}
        for cid, g in (d[taut].groupby("condition") if len(d) else [])]
    for kind in kinds_with("MASKS_TARGET_KEYS"):
        if len(d) and (d["kind"] == kind).any():
            tautologies.append({"condition": f"{kind} (all)", "n_rows": 0, "reason": (
                "a masked target's own sink score is 0 in the masked layers by construction; no verdict reads it "
                "(H4 reads the primary sink beyond the renormalisation prediction, and the predictions)")})
    d = d[~taut] if len(d) else d
    tol = exact_tol_for((manifest.get("model") or {}).get("dtype"))

    verdicts: dict[str, dict] = {}
    for h in hypotheses_of(manifest):
        kinds = {OUTCOMES[m].kind for m in h.measure}
        chosen = [c for c in conditions if h.selects(c) and c["kind"] in kinds]
        if not chosen:
            verdicts[h.id] = {"hypothesis": h.id, "claim": h.claim, "verdict": "not tested", "conditions": [],
                              "rule": VERDICT_RULE, "reason": "the run has no condition this hypothesis selects "
                                                              f"({', '.join(sorted(kinds))})"}
            continue
        families: dict[tuple, list[dict]] = {}
        for c in chosen:
            families.setdefault(KINDS[c["kind"]].family_key(c), []).append(c)
        labels = _family_labels(list(families))
        for fkey, fconds in families.items():
            # a condition acting on several target sets still gives one verdict per set: pooling sets (a
            # sub-threshold token that becomes a sink and non-sinks that never do) would average two answers
            sets = sorted({t for c in fconds for t in c.get("targets") or []})
            parts = [(None, labels[fkey])] if len(sets) <= 1 else \
                [(ts, "/".join(p for p in (KINDS[fkey[0]].family_label(fkey[:-1]), ts) if p)) for ts in sets]
            for target_set, label in parts:
                key = h.id if len(families) == 1 and target_set is None else f"{h.id}/{label}"
                verdicts[key] = _family_verdict(h, key, fconds, conditions, d, seed=seed, tol=tol,
                                                tautological={t["condition"] for t in tautologies},
                                                target_set=target_set)
    _holm(verdicts)
    return verdicts, tautologies


def _family_labels(keys: list[tuple]) -> dict[tuple, str]:
    """Readable family labels: the key without its kind, the target sets only where families differ in them."""
    from interventions.spec.conditions import KINDS

    vary = len({k[-1] for k in keys}) > 1
    out = {}
    for k in keys:
        label = KINDS[k[0]].family_label(k[:-1])
        out[k] = f"{label}/{k[-1]}" if vary and label else (k[-1] if vary else label)
    return out


def _placebos_of(h, fconds: list[dict], conditions: list[dict]) -> list[str]:
    """The placebo conditions standing beside this family: generated for it (``params.placebo_of``) or listed."""
    ids = {c["id"] for c in fconds}
    listed = set(h.placebo.conditions) if h.placebo else set()
    return [c["id"] for c in conditions if c["id"] in listed or (c.get("params") or {}).get("placebo_of") in ids]


def _family_verdict(h, key: str, fconds: list[dict], conditions: list[dict], d: pd.DataFrame, *, seed: int,
                    tol: float, tautological: set, target_set: str | None = None) -> dict:
    from interventions.spec.conditions import kinds_with
    from interventions.spec.outcomes import OUTCOMES

    ids = [c["id"] for c in fconds]
    placebo_ids = _placebos_of(h, fconds, conditions)
    empty = d.iloc[:0]
    rows = d[d["condition"].isin(ids)] if len(d) else empty
    kind = fconds[0]["kind"]
    notes: list[str] = []
    target_rows = rows[~rows["is_control"]] if len(rows) else empty
    placebo_rows = d[d["condition"].isin(placebo_ids) & ~d["is_control"]] if len(d) and placebo_ids else empty
    if target_set is not None:
        target_rows = target_rows[target_rows["target_set"] == target_set]
        placebo_rows = placebo_rows[placebo_rows["target_set"] == target_set]
    if kind in kinds_with("MASKS_TARGET_KEYS") and _not_secondary(target_rows):
        notes.append(f"{_not_secondary(target_rows)} masked target(s) were not secondary sinks in the clean run; "
                     "H4 is about secondary sinks, so their rows were left out")
        target_rows = target_rows[target_rows["clean_kind"] == "secondary"]
    arms_rows = {
        "target": target_rows,
        "controls": rows[rows["is_control"]] if len(rows) else empty,
        "placebo": placebo_rows,
    }
    arm_conditions = {"placebo": placebo_ids, "controls": [f"{i} (controls)" for i in ids], "clean": []}
    components, details, used = [], {}, []
    for i, name in enumerate(h.measure):
        m = OUTCOMES[name]
        direction = h.direction or m.direction
        margin = h.margin if h.margin is not None else m.margin
        target = m.units(arms_rows["target"], "target")
        arm, comparison, why = _choose_arm(h.compare, m, arms_rows)
        if arm is None:
            components.append(untestable_component(name, why, direction=direction, margin=margin))
            details[name] = {"n_units": int(len(target))}
            continue
        if arm == "controls" and _masks_mass(arms_rows["target"]):
            target, comparison, balance = _mass_balance(arms_rows["target"], arms_rows["controls"], target,
                                                        comparison, notes, measure=name, direction=direction)
            details["masked_attention_mass"] = balance
            too_few = _too_few_matched(balance, min_traces_for(h.alpha))
            if too_few:
                components.append(untestable_component(name, too_few, direction=direction, margin=margin))
                details[name] = {"n_units": int(len(target)), "compared_with": arm}
                continue
        test = f"{m.meaning}; per-unit mean" + (f" minus the {arm} arm" if arm != "clean" else " vs the clean run") + \
            " (sign flip over independent units, CI by test inversion)"
        comp = family_component(name, test, target, comparison, direction=direction, alpha=h.alpha, margin=margin,
                                seed=seed + i, tol=tol, collapse=m.fixed_by_prefix)
        comp["compared_with"] = arm
        components.append(comp)
        used.append(arm)
        details[name] = {"n_units": int(len(target)), "compared_with": arm,
                         "n_comparison_units": int(len(comparison)) if comparison is not None else 0,
                         "by_condition": {str(k): float(v) for k, v in target.groupby("condition")["value"].mean()
                                          .items()} if len(target) else {}}
    if kind in kinds_with("SWEEPS_LAYERS") and len(target_rows):
        pre = target_rows[target_rows["intervened_layer"] < target_rows["clean_l_start"]]
        by_off = pre.assign(offset=pre["clean_l_start"] - pre["intervened_layer"]).groupby("offset")["suppressed"]
        details["rate_by_offset_before_l_start"] = {int(k): float(v) for k, v in by_off.mean().items()}
        if "suppression_trend" not in h.measure:
            notes.append("the trend over swap layers ('more at later layers') is descriptive here (rate_by_offset); "
                         "declare measure: [suppression_rate, suppression_trend] to test it")
    excluded = [{"condition": c, "reason": "tautological: edits the whole hidden state at the target's own "
                                           "l_start (see tautologies); left out"} for c in ids if c in tautological]
    arm = used[0] if used else None
    if target_set is not None:
        details["target_set"] = target_set
    record = family_report(key, h.id, h.claim, h.alpha, components, conditions=ids, comparison=arm,
                           comparison_conditions=arm_conditions.get(arm, []) if arm else [], excluded=excluded,
                           details=details, notes=notes)
    ps = [c.get("p") for c in components]
    # intersection-union: the compound rejects only when every component does, at the largest p
    record["family_p"] = max(ps) if ps and all(p is not None for p in ps) else None
    return record


def _choose_arm(compare: str, m, arms_rows: dict) -> tuple[str | None, pd.DataFrame | None, str]:
    """The arm that decides measure ``m`` here with its units (None for the clean run), or (None, None, why)."""
    if compare != "auto" and compare not in m.comparisons:
        why = m.why_not.get(compare, "it cannot decide this measure")
        return None, None, (f"not testable: compare: {compare} cannot decide {m.name} ({why}); use "
                      f"{' or '.join(m.comparisons)}")
    candidates = m.comparisons if compare == "auto" else (compare,)
    for arm in candidates:
        if arm == "clean":
            return arm, None, ""
        units = m.units(arms_rows[arm], arm)
        if len(units):
            return arm, units, ""
    hints = "; ".join(ARM_HINTS[a] for a in candidates if ARM_HINTS[a])
    return None, None, (f"not testable: no {' or '.join(candidates)} arm with units for {m.name} in this run (the only "
                  f"arms whose units can move both ways under the null){'; ' + hints if hints else ''}")


def _not_secondary(target_rows: pd.DataFrame) -> int:
    if "clean_kind" not in target_rows.columns or target_rows.empty:
        return 0
    return int(target_rows.loc[target_rows["clean_kind"] != "secondary", ["trace", "position"]]
               .drop_duplicates().shape[0])


MASS_CONTROL_FIX = ("the traces' ordinary tokens near the sinks draw too little attention to match them: mask fewer "
                    "sinks per trace (a secondary_sinks filter: tokens, level), match with sets of ordinary tokens "
                    "(matched_controls by: attention_mass, size: auto) within a wider caliper, or give longer traces")


def _masks_mass(rows: pd.DataFrame) -> bool:
    """Whether these rows record the clean attention mass their masks remove (a kind that masks keys)."""
    return "masked_attention_mass" in rows.columns and bool(rows["masked_attention_mass"].notna().any())


def _caliper_text(caliper: tuple[float, float]) -> str:
    return f"{round(caliper[0], 3):g}-{round(caliper[1], 3):g}x"


def _mass_balance(target_rows, control_rows, target, comparison, notes, *, measure: str = "kl",
                  direction: str = "nonzero"):
    """Units of one (condition, trace) kept only where the controls' masks remove a clean attention mass inside
    the caliper of the claim's direction (:func:`~interventions.spec.target_sets.mass_caliper`: 1-2x the targets'
    for ``increase``, 0.5-1x for ``decrease``, 0.5-2x for ``nonzero``; ``masked_attention_mass``, mean over the
    masked layers).

    A mask that removes less attention moves the forward less, whatever the masked tokens are: against controls
    that remove half the mass, a KL that only follows the mass reads as an effect of the sinks, and inside a
    symmetric caliper the gap still tilts the test toward the claim; cut at 1, any gap tilts it against. Units are
    traces (one forward masks all of a trace's targets, another all of its controls), so a trace whose controls
    are outside the caliper (or missing) leaves both arms. Returns (target, comparison, balance): the kept units
    and ``{targets, controls, controls_over_targets (median), caliper, traces_matched, traces_dropped}``.
    """
    if comparison is None:
        return target, comparison, {}

    def per_trace(rows):
        r = rows.dropna(subset=["masked_attention_mass"]).drop_duplicates(["condition", "trace", "layer"])
        return r.groupby(["condition", "trace"])["masked_attention_mass"].mean()

    caliper = mass_caliper(direction)
    t, c = per_trace(target_rows), per_trace(control_rows)
    ratio = (c.reindex(t.index) / t.replace(0, np.nan)).dropna()
    keep = ratio[(ratio > caliper[0]) & (ratio < caliper[1])].index
    balance = {"targets": float(t.mean()) if len(t) else None, "controls": float(c.mean()) if len(c) else None,
               "controls_over_targets": float(ratio.median()) if len(ratio) else None,
               "caliper": [round(caliper[0], 6), caliper[1]], "direction": direction,
               # traces, not (condition, trace) pairs: the units of a family's measures are traces
               "traces_matched": int(keep.get_level_values("trace").nunique()),
               "traces_dropped": int(t.index.get_level_values("trace").nunique()
                                     - keep.get_level_values("trace").nunique())}
    if balance["traces_dropped"]:
        ratio_text = f"{balance['controls_over_targets']:.2g}" if balance["controls_over_targets"] is not None else "?"
        n_traces = t.index.get_level_values("trace").nunique()
        notes.append(f"{measure}: {balance['traces_dropped']} of {n_traces} traces dropped: their controls' masks "
                     f"remove a clean attention mass outside {_caliper_text(caliper)} the targets' (the caliper "
                     f"of a claim of {direction}; median ratio {ratio_text}; no control at all counts as outside)")

    def kept(units):
        if units is None or units.empty:
            return units
        on = pd.MultiIndex.from_frame(units[["condition", "trace"]])
        return units[on.isin(keep)]

    return kept(target), kept(comparison), balance


def _too_few_matched(balance: dict, min_units: int) -> str:
    """Why a component compared with mass-checked controls is not testable (too few matched traces), or ""."""
    if not balance or balance["traces_matched"] >= min_units:
        return ""
    ratio = balance["controls_over_targets"]
    return (f"not testable: only {balance['traces_matched']} trace(s) matched on attention mass (fewer than "
            f"{min_units}, the fewest independent units for a decisive verdict): the controls' masks remove "
            f"{'?' if ratio is None else f'{ratio:.2g}'}x the targets' clean attention mass (median), outside "
            f"{_caliper_text(balance['caliper'])} (the caliper of a claim of {balance['direction']}) in "
            f"{balance['traces_dropped']} trace(s); {MASS_CONTROL_FIX}")


def _holm(verdicts: dict) -> None:
    """Holm over the run's families with a p (statsmodels ``multipletests``): ``p_holm`` and ``verdict_holm``."""
    keyed = [(k, v) for k, v in verdicts.items() if v.get("family_p") is not None]
    if not keyed:
        for v in verdicts.values():
            v.setdefault("p_holm", None)
            v.setdefault("verdict_holm", v.get("verdict"))
        return
    adjusted = adjust([v["family_p"] for _, v in keyed], "holm")
    for (_, v), p in zip(keyed, adjusted):
        v["p_holm"] = float(p)
        alpha = v.get("alpha", ALPHA)
        v["verdict_holm"] = v["verdict"] if v["verdict"] != "supported" or p < alpha else "inconclusive"
    for v in verdicts.values():
        v.setdefault("p_holm", None)
        v.setdefault("verdict_holm", v.get("verdict"))
