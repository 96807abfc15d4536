"""``intervene compare-runs``: per-layer effects of several runs side by side, with differences."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from .common import info, user_errors


@user_errors
def compare_runs_command(
    runs: list[Path] = typer.Argument(..., help="Run folders written by `intervene run` (results/<name> means its "
                                               "newest complete run). The first is the reference; each other run "
                                               "is compared with it. One run is enough with --align condition."),
    measure: str = typer.Option("is_sink", "--measure", "-m",
                                help="Per-layer column of a registered measure (is_sink, hidden_cos, hidden_norm, "
                                     "mlp_out_norm, sink_score, primary_sink_score, key_norm, value_norm, ...). The "
                                     "effect is intervened minus clean, mean over targets."),
    align: str = typer.Option("layer", "--align", "-a",
                              help="layer (absolute), depth (layer/(L-1), binned), l_start (layers since each "
                                   "run's l_start), or condition (one model: each condition against the first)."),
    conditions: str = typer.Option(None, "--conditions", "-c",
                                   help="Comma-separated condition ids (default: those every run has; with --align "
                                        "condition: all, the first is the reference)."),
    group: str = typer.Option("targets", "--group", help="targets or controls (the matched-control positions)."),
    bins: int = typer.Option(None, "--bins", help="--align depth: number of depth bins (default: the fewest layers "
                                                  "among the runs)."),
    l_start: list[str] = typer.Option(None, "--l-start", help="--align l_start: override a run's l_start, "
                                                              "LABEL=LAYER (repeatable)."),
    labels: str = typer.Option(None, "--labels", help="Comma-separated names for the runs (default: spec names)."),
    all_pairs: bool = typer.Option(False, "--all-pairs", help="Compare every pair of runs, not only each with the "
                                                              "first."),
    n_boot: int = typer.Option(2000, "--n-boot", help="Bootstrap draws (at least 2000)."),
    seed: int = typer.Option(0, "--seed", help="Seed of the bootstrap and permutation generators."),
    correction: str = typer.Option("holm", "--correction", help="holm, bh (Benjamini-Hochberg; fdr_bh is the "
                                                                "same), bonferroni or none: across every row of "
                                                                "the table."),
    out: Path = typer.Option(Path("results/compare-runs"), "--out", "-o", help="Folder for the tables and figures."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison (settings, rows, notes) as JSON on "
                                                        "stdout instead of a table."),
):
    """Compare the per-layer effects of runs (models, specs, seeds) or of conditions of one model.

    Per aligned layer: each run's effect with its trace-bootstrap CI, the difference to the first
    run with a CI (traces resampled within each run; paired by trace when two runs share traces
    and model) and a permutation p adjusted across the compared layers. Writes comparison.parquet
    and .csv (differences), effects.parquet and .csv (each run's line), comparison.json (settings,
    notes on dropped layers), effects_by_layer.png and difference_heatmap.png into --out.

    For detected sinks against the paper's detection files, use `intervene compare`.

    Example:

        intervene compare-runs results/mlp_zero results/mlp_zero_llama --align l_start --out results/cmp
    """
    from interventions.errors import UserError
    from interventions.studies.compare_runs import compare_runs, write_comparison

    overrides = {}
    for item in l_start or []:
        name, sep, value = item.rpartition("=")
        if not sep or not value.strip().lstrip("-").isdigit():
            raise UserError(f"--l-start {item!r}: write LABEL=LAYER, e.g. --l-start mlp_zero=4", field="l_start")
        overrides[name] = int(value)
    result = compare_runs(runs, measure=measure, align=align, group=group, bins=bins, l_starts=overrides,
                          conditions=[c.strip() for c in conditions.split(",") if c.strip()] if conditions else None,
                          labels=[x.strip() for x in labels.split(",")] if labels else None,
                          pairs="all" if all_pairs else "reference", n_boot=n_boot, seed=seed, correction=correction)
    if as_json:
        from ..report.tables import print_json

        print_json({"settings": result.settings, "rows": result.table.to_dict(orient="records"),
                    "notes": list(result.notes)})
    else:
        print_comparison(result)
    paths = write_comparison(result, out)
    info(f"wrote {paths['comparison']} (+ .csv), {paths['effects']}, {paths['effect_lines'].name}, "
         f"{paths['heatmap'].name} in {out}")


def _num(v, fmt="{:.3g}") -> str:
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else fmt.format(v)


def print_comparison(result) -> None:
    """The comparison as a table on stdout (the rules of :func:`interventions.report.tables.show_table`);
    exact zeros print as 0 with no CI or p."""
    from interventions.studies.compare_runs import side_labels
    from ..report.tables import out, show_table

    t = result.table
    s = result.settings
    columns = ["x", "run vs reference", "effect [CI]", "reference [CI]", "difference [CI]", "p adj"]
    many_conditions = t["condition"].nunique() > 1
    rows = []
    for _, r in t.iterrows():
        who, ref = side_labels(r["run"], r["condition"], r["ref_run"], r["ref_condition"])
        pair = f"{who} vs {ref}" + (f" [{r['condition']}]" if r["condition"] == r["ref_condition"] and many_conditions
                                    else "")

        def ci(e, lo, hi):
            return _num(e) + (f" [{_num(lo)}, {_num(hi)}]" if _num(lo) else "")

        diff = "0 (exact)" if r["ci_method"] == "exact zero" else ci(r["diff"], r["diff_ci_low"], r["diff_ci_high"])
        rows.append([f"{r['x']:g}", pair, ci(r["effect"], r["ci_low"], r["ci_high"]),
                     ci(r["ref_effect"], r["ref_ci_low"], r["ref_ci_high"]), diff, _num(r["p_adj"])])
    show_table(f"{s['measure']} ({s['group']}): run - reference by {s['axis']}", columns, rows,
               right=tuple(c for c in columns if c != "run vs reference"))
    for note in result.notes:
        out.print(f"note: {note}", markup=False)
