"""Statistics for a finished run folder: the tables a run wrote in, ``stats.json`` out.

Every number comes from :mod:`interventions.stats` (pure functions); this module only picks
the right rows for each test. A hypothesis whose intervention kind is absent from the run is
reported as ``not tested``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .store import check_run_folder, read_parts, write_json_atomic

PER_LAYER_MEASURES = ("is_sink", "hidden_norm", "hidden_cos", "sink_score", "primary_sink_score")


def resolve_run_dir(path: str | Path) -> Path:
    """A run folder, or a spec's results folder (``results/<name>``): then its newest complete run."""
    p = Path(path)
    if (p / "manifest.json").exists() or not p.is_dir():
        return p
    runs = []
    for child in p.iterdir():
        manifest = child / "manifest.json"
        if manifest.exists():
            data = json.loads(manifest.read_text())
            if data.get("status") == "complete":
                runs.append((data.get("created_utc", ""), child.name, child))
    if not runs:
        raise UserError(f"{p} holds no complete run (no manifest.json with status complete)", field="run_dir")
    return max(runs)[2]


def load_run(run_dir: str | Path) -> dict[str, pd.DataFrame]:
    """The tables of a run folder (effects, sink_layers, clean_profile, clean_sinks)."""
    run = resolve_run_dir(run_dir)
    check_run_folder(run)
    tables = {
        "effects": read_parts(run / "effects.parquet"),
        "sink_layers": pd.read_parquet(run / "sink_layers.parquet") if (run / "sink_layers.parquet").exists()
        else pd.DataFrame(),
        "clean_profile": pd.read_parquet(run / "clean_profile.parquet") if (run / "clean_profile.parquet").exists()
        else pd.DataFrame(),
        "sink_window": pd.read_parquet(run / "sink_window.parquet") if (run / "sink_window.parquet").exists()
        else pd.DataFrame(),
    }
    sinks_file = run / "clean_sinks.jsonl"
    tables["clean_sinks"] = (pd.read_json(sinks_file, lines=True) if sinks_file.exists() and sinks_file.stat().st_size
                             else pd.DataFrame(columns=["trace", "position", "kind", "l_start", "lifetime",
                                                        "mlp_out_norm", "censored"]))
    tables["manifest"] = json.loads((run / "manifest.json").read_text())
    return tables


def per_target(effects: pd.DataFrame) -> pd.DataFrame:
    """One row per (condition, group, trace, position); ``sink_score`` is read one layer after the
    edit (``ref_sink_score``), where attention first sees it."""
    if effects.empty:
        return effects
    first = effects.drop_duplicates(["condition", "is_control", "trace", "position"])
    return first.drop(columns=["sink_score", "clean_sink_score"]).rename(
        columns={"ref_sink_score": "sink_score", "clean_ref_sink_score": "clean_sink_score"})


def not_tested(hypothesis: str, kind: str) -> dict:
    return {"hypothesis": hypothesis, "verdict": "not tested", "reason": f"the run has no {kind} condition"}


def compute_stats(tables: dict, *, seed: int = 0, n_boot: int = 500) -> dict:
    """Every statistic of the run as a JSON-ready dict."""
    from . import stats as st

    effects = tables["effects"]
    out_notes: list[str] = []
    if "non_finite" in effects.columns and effects["non_finite"].any():
        # NaN/inf from an overflowing edit (e.g. bf16 at 10x) would poison every mean; the events
        # are listed in the manifest, and the statistics use the finite rows only.
        bad = effects["non_finite"].astype(bool)
        out_notes.append(f"{int(bad.sum())} effects rows with non-finite activations were left out "
                         "(see manifest non_finite)")
        effects = effects[~bad]
    secondary = tables["clean_sinks"]
    secondary = secondary[secondary["kind"] == "secondary"] if len(secondary) else secondary
    out: dict = {"format_version": 1, "run_id": tables["manifest"].get("run_id"),
                 "spec_name": tables["manifest"].get("spec_name"), "seed": seed, "notes": out_notes}
    # the fixed window after l_start (dead layers included) when the run wrote it; older runs: alive rows only
    norm_rows = tables.get("sink_window")
    norm_rows = norm_rows if norm_rows is not None and len(norm_rows) else tables["sink_layers"]
    out["norm_score"] = st.fit_norm_score(norm_rows) if len(norm_rows) else \
        {"estimable": False, "reason": "no secondary sink in the clean run"}
    out["norm_lifetime"] = st.fit_norm_lifetime(secondary[["trace", "position", "mlp_out_norm", "lifetime",
                                                           "censored"]], seed=seed) if len(secondary) else \
        {"estimable": False, "reason": "no secondary sink in the clean run"}
    out["compensation"] = st.compensation(
        tables["clean_profile"], secondary[["trace", "position", "l_start", "lifetime"]] if len(secondary)
        else pd.DataFrame(columns=["trace", "position", "l_start", "lifetime"]),
        effects[effects.kind == "attention_mask"] if len(effects) else None, seed=seed) \
        if len(tables["clean_profile"]) else {"estimable": False, "reason": "no clean profile"}

    kinds = set(effects.kind) if len(effects) else set()
    targets = per_target(effects)
    if "scale" in kinds:
        dose_rows = targets[targets.kind == "scale"][["trace", "position", "token", "is_control", "factor",
                                                      "lifetime", "sink_score", "condition", "target_set"]]
        out["dose_response"] = {}
        for group, rows in _dose_groups(dose_rows).items():
            out["dose_response"][group] = st.dose_response(rows, seed=seed)
    if len(effects):
        frame = effects.copy()
        for m in PER_LAYER_MEASURES:
            frame[m] = frame[m].astype(float)
            frame["clean_" + m] = frame["clean_" + m].astype(float)
        dtype = (tables["manifest"].get("model") or {}).get("dtype")
        layer_effects = st.per_layer_effects(frame, list(PER_LAYER_MEASURES), seed=seed,
                                             snap_rtol=st.snap_rtol_for(dtype))
        out["per_layer_effects"] = st.to_jsonable(layer_effects.to_dict(orient="records"))
        out["per_layer_notes"] = list(layer_effects.attrs.get("notes", []))
    out["verdicts"], out["tautologies"] = hypothesis_verdicts(effects, tables["manifest"], seed=seed)
    # descriptive means with trace-level intervals: every error bar the report's figures draw
    out["summaries"] = st.figure_summaries(effects, tables["sink_layers"], seed=seed)
    return st.to_jsonable(out)


def _dose_groups(rows: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Scale conditions grouped by the target sets they act on (each group is its own dose-response)."""
    groups: dict[str, list] = {}
    for _, cond_rows in rows.groupby("condition", sort=False):
        name = "+".join(sorted(set(cond_rows.loc[~cond_rows.is_control, "target_set"]))) or "controls"
        groups.setdefault(name, []).append(cond_rows)
    return {k: pd.concat(v, ignore_index=True).drop(columns=["condition", "target_set"]) for k, v in groups.items()}


def _mark_complete(run: Path) -> None:
    """A run that ended without statistics (status ``tables``) is complete once its stats.json exists."""
    manifest = run / "manifest.json"
    try:
        data = json.loads(manifest.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return
    if data.get("status") == "tables":
        data["status"] = "complete"
        data["statistics_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        write_json_atomic(manifest, data)


def analyze_run(run_dir, *, progress: bool = True, report: bool = True, seed: int | None = None):
    """Write ``stats.json`` (and ``report.md`` with figures) for ``run_dir``; returns (stats, report_path)."""
    run = resolve_run_dir(run_dir)
    tables = load_run(run)
    stats = compute_stats(tables, seed=tables["manifest"].get("seed", 0) if seed is None else seed)
    write_json_atomic(run / "stats.json", stats)
    _mark_complete(run)
    report_path = None
    if report:
        from .report.render import render_report

        report_path = render_report(run, tables, stats)
    return stats, report_path


# --------------------------------------------------------------------------------------------
# verdicts: one per (declared hypothesis, condition family), never pooled across sites or layers


def _family_key(c: dict) -> tuple:
    """What a family shares: kind and site, plus the layer rule (a mean-swap sweep's layers and a
    scale's factors stay together; an attention mask's redirect splits it)."""
    if c["kind"] == "mean_swap":
        return (c["kind"], c.get("site"))
    if c["kind"] == "attention_mask":
        return (c["kind"], str(c.get("layer")), c.get("redirect"))
    return (c["kind"], c.get("site"), str(c.get("layer")))


def _family_label(key: tuple) -> str:
    return "/".join(str(p) for p in key[1:] if p not in (None, "")).replace(".", "_")


def _conditions_of(manifest: dict, effects: pd.DataFrame) -> list[dict]:
    conds = manifest.get("conditions")
    if conds:
        return conds
    if effects.empty:  # a synthetic run folder without a manifest condition list
        return []
    first = effects.drop_duplicates("condition")
    return [{"id": r.condition, "kind": r.kind, "site": r.site or None, "layer": getattr(r, "intervened_layers", ""),
             "redirect": getattr(r, "redirect", None) or None, "targets": [], "controls": None}
            for r in first.itertuples()]


def _hypotheses_of(manifest: dict) -> list:
    from .spec.hypotheses import Hypothesis, default_hypotheses

    declared = (manifest.get("spec") or {}).get("hypotheses") or []
    return [Hypothesis.model_validate(h) for h in declared] if declared else default_hypotheses()


def tautological_rows(d: pd.DataFrame) -> pd.Series:
    """Rows whose sink measures hold by construction: the whole hidden state (block_output) of the
    target replaced, zeroed or scaled at the layer where its sink status is first read (its clean
    l_start)."""
    if d.empty:
        return pd.Series(False, index=d.index)
    site = d["site"].fillna("") if "site" in d.columns else pd.Series("", index=d.index)
    return (d["kind"].isin(["zero", "scale", "mean_swap"]) & (site == "block_output")
            & (d["intervened_layer"] == d["clean_l_start"]))


def _per_unit(rows: pd.DataFrame, keys: list[str], **agg) -> pd.DataFrame:
    return rows.groupby(keys, sort=True).agg(**agg).reset_index() if len(rows) else pd.DataFrame(columns=keys + list(agg))


def _trace_means(units: pd.DataFrame, col: str) -> pd.Series:
    return units.groupby("trace")[col].mean().astype(float) if len(units) else pd.Series(dtype=float)


def _swap_rows(rows: pd.DataFrame, arm: str) -> pd.DataFrame:
    """Mean-swap rows an H3 measure reads: targets swapped before their l_start (the claim is about
    swaps before the sink forms), placebo rows on clean sinks, every control row."""
    if arm == "target":
        return rows[rows["intervened_layer"] < rows["clean_l_start"]]
    if arm == "placebo":
        return rows[rows["clean_lifetime"].fillna(0) > 0]
    return rows


def _measure_units(measure: str, rows: pd.DataFrame, *, arm: str) -> pd.DataFrame:
    """Per-unit outcome ``value`` of one arm (``target``, ``placebo`` or ``controls``) for a measure."""
    keys = ["condition", "trace", "position"]
    if rows.empty:
        return pd.DataFrame(columns=keys + ["value"])
    if measure == "sink_rate_change":
        u = _per_unit(rows, keys, was=("clean_lifetime", "max"), now=("lifetime", "max"))
        u["was"], u["now"] = u["was"].fillna(0) > 0, u["now"].fillna(0) > 0
        if arm != "controls":
            u = u[u["was"]]   # targets and placebo: clean sinks, which can be lost or kept in both arms
        return u.assign(value=u["now"].astype(float) - u["was"].astype(float))
    if measure == "suppression_rate":
        u = _per_unit(_swap_rows(rows, arm), keys, value=("suppressed", "max"))
        return u.assign(value=u["value"].astype(float))
    if measure == "suppression_trend":
        # Within each trace: OLS slope of "suppressed" on the swap layer over (target, layer < l_start)
        # pairs, so "more suppression at later layers" is a per-trace number the sign flip can test.
        u = _per_unit(_swap_rows(rows, arm), ["trace", "position", "intervened_layer"], value=("suppressed", "max"))
        out = []
        for trace, g in u.groupby("trace"):
            x, y = g["intervened_layer"].to_numpy(float), g["value"].to_numpy(float)
            if np.unique(x).size >= 2:
                out.append({"condition": "*", "trace": trace, "position": -1,
                            "value": float(np.polyfit(x, y, 1)[0])})
        return pd.DataFrame(out, columns=keys + ["value"])
    if measure == "lifetime_slope":
        u = _per_unit(rows, ["trace", "position", "factor"], lifetime=("lifetime", "max"),
                      clean=("clean_lifetime", "max"))
        slopes = []
        for (trace, pos), g in u.groupby(["trace", "position"]):
            pts = [(float(f), float(lt)) for f, lt in zip(g["factor"], g["lifetime"]) if lt > 0]
            if g["clean"].iloc[0] > 0 and not any(np.isclose(f, 1.0) for f, _ in pts):
                pts.append((1.0, float(g["clean"].iloc[0])))
            if len({f for f, _ in pts}) >= 2:
                x, y = np.log([p[0] for p in pts]), np.array([p[1] for p in pts])
                slopes.append({"trace": trace, "position": pos, "value": float(np.polyfit(x, y, 1)[0])})
        return pd.DataFrame(slopes, columns=["trace", "position", "value"])
    if measure == "primary_score_after_mask":
        out = []
        for (cond, trace), g in rows.groupby(["condition", "trace"]):
            masked = g.loc[g["masked"].astype(bool), "layer"] if "masked" in g.columns else pd.Series(dtype=int)
            if masked.empty:
                continue
            after = g[g["layer"] > masked.max()].drop_duplicates("layer")
            if len(after):
                out.append({"condition": cond, "trace": trace, "position": -1,
                            "value": float((after["primary_sink_score"] - after["clean_primary_sink_score"]).mean())})
        return pd.DataFrame(out, columns=keys + ["value"])
    if measure == "primary_beyond_renormalisation":
        out = []
        if "renorm_primary_sink_score" not in rows.columns:
            return pd.DataFrame(columns=keys + ["value"])
        for (cond, trace), g in rows.groupby(["condition", "trace"]):
            per_layer = g.groupby("layer").agg(observed=("primary_sink_score", "first"),
                                               clean=("clean_primary_sink_score", "first"),
                                               predicted=("renorm_primary_sink_score", "max"))
            masked = per_layer["predicted"].notna()
            if not masked.any():
                continue
            # From the first masked layer on: the arithmetic prediction where this forward masks,
            # the clean score in the layers after (and between) its masks, where nothing is removed.
            span = per_layer[per_layer.index >= per_layer.index[masked.to_numpy()].min()]
            expected = span["predicted"].where(span["predicted"].notna(), span["clean"])
            out.append({"condition": cond, "trace": trace, "position": -1,
                        "value": float((span["observed"] - expected).mean())})
        return pd.DataFrame(out, columns=keys + ["value"])
    if measure == "kl":
        return _per_unit(rows.dropna(subset=["kl"]), keys, value=("kl", "mean"))
    raise ValueError(f"unknown measure {measure!r}")


def _mass_balance(target_rows: pd.DataFrame, control_rows: pd.DataFrame | None, notes: list[str]) -> dict:
    """Clean attention mass the masks remove, targets vs controls (mean per query over masked layers)."""
    def mean_mass(r):
        if r is None or not len(r):
            return None
        per = r.dropna(subset=["masked_attention_mass"]).drop_duplicates(["condition", "trace", "layer"])
        return float(per["masked_attention_mass"].mean()) if len(per) else None

    t, c = mean_mass(target_rows), mean_mass(control_rows)
    out = {"targets": t, "controls": c, "controls_over_targets": c / t if t and c is not None else None}
    if out["controls_over_targets"] is not None and not 0.5 <= out["controls_over_targets"] <= 2:
        notes.append(f"the controls' masks remove {out['controls_over_targets']:.2g}x the targets' clean attention "
                     "mass (the best match available); the renormalisation prediction, not the controls, accounts "
                     "for the arithmetic of removing it")
    return out


def hypothesis_verdicts(effects: pd.DataFrame, manifest: dict, *, seed: int = 0) -> tuple[dict, list[dict]]:
    """Every declared (or default H1-H4) hypothesis, one verdict per condition family.

    Returns ``(verdicts, tautologies)``. Verdicts are keyed by the hypothesis id when it has one
    family in the run, else ``<id>/<family>``; a hypothesis with no condition in the run is
    "not tested". Each record names the conditions it rests on, what they were compared with
    (placebo conditions, matched controls or the clean run), and the rows left out as
    tautological (with why).
    """
    from .spec.hypotheses import MEASURES, is_placebo
    from .stats.verdicts import family_component, family_report

    conditions = _conditions_of(manifest, effects)
    by_id = {c["id"]: c for c in conditions}
    d = effects.copy()
    if len(d):
        d["is_control"] = d["is_control"].astype(bool)
        if "suppressed" in d.columns:
            d["suppressed"] = d["suppressed"].astype(bool)
    taut = tautological_rows(d) if len(d) else pd.Series(dtype=bool)
    tautologies = []
    for cid, g in (d[taut].groupby("condition") if len(d) else []):
        tautologies.append({"condition": cid, "n_rows": int(len(g)), "reason": (
            "edits the whole hidden state (block_output) of the target at its own l_start, where its sink status "
            "is read: it removes the sink by construction; left out of every verdict")})
    if len(d) and (d["kind"] == "attention_mask").any():
        tautologies.append({"condition": "attention_mask (all)", "n_rows": 0, "reason": (
            "a masked target's own sink score is 0 in the masked layers by construction; no verdict reads it "
            "(H4 reads the primary sink beyond the renormalisation prediction, and the predictions)")})
    d = d[~taut] if len(d) else d

    verdicts: dict[str, dict] = {}
    for h in _hypotheses_of(manifest):
        chosen = [c for c in conditions if h.selects(c)]
        kinds = {MEASURES[m][0] for m in h.measure}
        chosen = [c for c in chosen if c["kind"] in kinds]
        if not chosen:
            from .stats.verdicts import VERDICT_RULE

            verdicts[h.id] = {"hypothesis": h.id, "claim": h.claim, "verdict": "not tested", "conditions": [],
                              "rule": VERDICT_RULE,
                              "reason": f"the run has no condition this hypothesis selects ({', '.join(sorted(kinds))})"}
            continue
        families: dict[tuple, list[dict]] = {}
        for c in chosen:
            families.setdefault(_family_key(c), []).append(c)
        for fkey, fconds in families.items():
            key = h.id if len(families) == 1 else f"{h.id}/{_family_label(fkey)}"
            verdicts[key] = _family_verdict(h, key, fkey, fconds, conditions, by_id, d, seed=seed,
                                            family_component=family_component, family_report=family_report,
                                            is_placebo=is_placebo,
                                            tautological={t["condition"] for t in tautologies})
    return verdicts, tautologies


def _family_verdict(h, key, fkey, fconds, conditions, by_id, d, *, seed, family_component, family_report,
                    is_placebo, tautological: set) -> dict:
    from .spec.hypotheses import MEASURES

    ids = [c["id"] for c in fconds]
    kind = fkey[0]
    listed = list(h.placebo.conditions) if h.placebo else []
    placebo_ids = [c["id"] for c in conditions if c["id"] in listed or (
        is_placebo(c["id"]) and c["kind"] == kind and sorted(c.get("targets") or []) ==
        sorted(fconds[0].get("targets") or []) and (kind != "mean_swap" or c.get("site") == fkey[1]
                                                   or c.get("layer") == fconds[0].get("layer")))]
    rows = d[d["condition"].isin(ids)] if len(d) else d
    target_rows = rows[~rows["is_control"]] if len(rows) else rows
    control_rows = rows[rows["is_control"]] if len(rows) else rows
    placebo_rows = d[d["condition"].isin(placebo_ids) & ~d["is_control"]] if len(d) and placebo_ids else d.iloc[:0]
    notes: list[str] = []
    if h.compare == "placebo" or (h.compare == "auto" and len(placebo_rows)):
        arm, comp_rows, comp_ids = "placebo", placebo_rows, placebo_ids
    elif h.compare == "controls" or (h.compare == "auto" and len(control_rows)):
        arm, comp_rows, comp_ids = "controls", control_rows, [f"{i} (controls)" for i in ids]
    else:
        arm, comp_rows, comp_ids = "clean", None, []
    if h.compare == "placebo" and not len(placebo_rows):
        notes.append("compare: placebo, but the run has no placebo condition for this family (add placebo: layers)")
    components, details = [], {}
    for i, m in enumerate(h.measure):
        _, direction, margin, meaning = MEASURES[m]
        direction = h.direction or direction
        margin = h.margin if h.margin is not None else margin
        t_units = _measure_units(m, target_rows, arm="target")
        c_units = _measure_units(m, comp_rows, arm=arm) if comp_rows is not None else None
        target = _trace_means(t_units, "value")
        comparison = _trace_means(c_units, "value") if c_units is not None else None
        if comparison is not None and comparison.empty:
            notes.append(f"{m}: the {arm} arm has no usable unit; compared with the clean run instead")
            comparison, used = None, "clean"
        else:
            used = arm
        test = f"{meaning}; per-trace mean" + (f" minus the {used} arm" if used != "clean" else " vs the clean run") + \
               " (exact trace-level sign flip, CI by test inversion)"
        components.append(family_component(m, test, target, comparison, direction=direction, alpha=h.alpha,
                                           margin=margin, n=int(len(t_units)), seed=seed + i))
        details[m] = {"n_units": int(len(t_units)), "n_comparison_units": int(len(c_units)) if c_units is not None
                      else 0, "by_condition": {str(k): float(v) for k, v in
                                               t_units.groupby("condition")["value"].mean().items()}
                      if "condition" in t_units.columns and len(t_units) else {}}
    if kind == "mean_swap" and len(target_rows):
        pre = target_rows[target_rows["intervened_layer"] < target_rows["clean_l_start"]]
        by_off = pre.assign(offset=pre["clean_l_start"] - pre["intervened_layer"]).groupby("offset")["suppressed"]
        details["rate_by_offset_before_l_start"] = {int(k): float(v) for k, v in by_off.mean().items()}
        if "suppression_trend" not in h.measure:
            notes.append("the trend over swap layers ('more at later layers') is descriptive here (rate_by_offset); "
                         "declare measure: [suppression_rate, suppression_trend] to test it")
    if kind == "attention_mask" and len(rows) and "masked_attention_mass" in rows.columns:
        details["masked_attention_mass"] = _mass_balance(target_rows, comp_rows if arm == "controls" else None, notes)
    excluded = [{"condition": c, "reason": "tautological: edits the whole hidden state at the target's own "
                                           "l_start (see tautologies); left out"} for c in ids if c in tautological]
    return family_report(key, h.id, h.claim, h.alpha, components, conditions=ids, comparison=arm,
                         comparison_conditions=comp_ids, excluded=excluded, details=details, notes=notes)

