"""Statistics for a finished run folder: the tables a run wrote in, ``stats.json`` out.

Every number comes from :mod:`interventions.stats` (pure functions); this module only picks
the right rows for each test. A hypothesis whose intervention kind is absent from the run is
reported as ``not tested``.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from interventions.errors import UserError
from interventions.spec.conditions import KINDS, kinds_with
from interventions.spec.measures import layer_columns
from interventions.store import check_run_folder, read_parts, write_json_atomic

from .hypotheses import hypothesis_verdicts, tautological_rows  # noqa: F401 - tautological_rows re-exported



def per_layer_columns(effects: pd.DataFrame) -> list[str]:
    """The per-layer measure columns (:func:`interventions.spec.measures.layer_columns`) the run wrote, with their
    ``clean_`` twins: what the per-layer effects test."""
    return [c for c in layer_columns() if c in effects.columns and "clean_" + c in effects.columns]


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
    from interventions import stats as st

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
    out["norm_score"] = st.fit_norm_score(norm_rows, seed=seed) if len(norm_rows) else \
        {"estimable": False, "reason": "no secondary sink in the clean run"}
    out["norm_lifetime"] = st.fit_norm_lifetime(secondary[["trace", "position", "mlp_out_norm", "lifetime",
                                                           "censored"]], seed=seed) if len(secondary) else \
        {"estimable": False, "reason": "no secondary sink in the clean run"}
    out["compensation"] = st.compensation(
        tables["clean_profile"], secondary[["trace", "position", "l_start", "lifetime"]] if len(secondary)
        else pd.DataFrame(columns=["trace", "position", "l_start", "lifetime"]),
        effects[effects.kind.isin(kinds_with("MASKS_TARGET_KEYS"))] if len(effects) else None, seed=seed) \
        if len(tables["clean_profile"]) else {"estimable": False, "reason": "no clean profile"}

    targets = per_target(effects)
    dosed = {name: cls.DOSE for name, cls in KINDS.items() if cls.DOSE} if len(effects) else {}
    for kind, dose in dosed.items():
        if not (targets.kind == kind).any():
            continue
        dose_rows = targets[targets.kind == kind][["trace", "position", "token", "is_control", dose, "lifetime",
                                                   "sink_score", "condition", "target_set"]].rename(
            columns={dose: "factor"})
        out.setdefault("dose_response", {})
        for group, rows in _dose_groups(dose_rows).items():
            out["dose_response"][group] = st.dose_response(rows, seed=seed)
    if len(effects):
        frame = effects.copy()
        measured = per_layer_columns(frame)
        for m in measured:
            frame[m] = frame[m].astype(float)
            frame["clean_" + m] = frame["clean_" + m].astype(float)
        dtype = (tables["manifest"].get("model") or {}).get("dtype")
        layer_effects = st.per_layer_effects(frame, measured, seed=seed,
                                             snap_rtol=st.snap_rtol_for(dtype))
        out["per_layer_effects"] = st.to_jsonable(layer_effects.to_dict(orient="records"))
        out["per_layer_notes"] = list(layer_effects.attrs.get("notes", []))
    out["verdicts"], out["tautologies"] = hypothesis_verdicts(effects, tables["manifest"], seed=seed)
    check = st.log_linear_check(out["norm_score"])
    if check:  # H2 (the lifetime_slope measure) carries it as context; it is not part of the verdict
        for record in out["verdicts"].values():
            if "lifetime_slope" in (record.get("details") or {}):
                record["log_linear_check"] = check
    out["multiplicity"] = {"method": "holm", "families": sum(1 for v in out["verdicts"].values()
                                                           if v.get("family_p") is not None),
                           "rule": "p_holm: Holm's step-down adjustment of each family's p (the largest of its "
                                   "components', an intersection-union test) over every family of the run; "
                                   "verdict_holm is 'supported' only when the raw verdict is and p_holm < alpha"}
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


def write_stats(run_dir, *, seed: int | None = None) -> tuple[Path, dict, dict]:
    """Compute and write ``stats.json`` for a run folder; returns ``(run folder, tables, stats)``.

    The report is rendered above this stage (:func:`interventions.pipeline.analyze_run`).
    """
    run = resolve_run_dir(run_dir)
    tables = load_run(run)
    stats = compute_stats(tables, seed=tables["manifest"].get("seed", 0) if seed is None else seed)
    write_json_atomic(run / "stats.json", stats)
    _mark_complete(run)
    return run, tables, stats
