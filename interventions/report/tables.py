"""Result tables for the terminal, on stdout (progress, warnings and errors stay on stderr).

A table fits whatever it is printed to: in a terminal, rich wraps the cells to the window; piped
or redirected (``intervene run spec.yaml > log.txt``), it is plain text, aligned when it fits in
``$COLUMNS`` (default 120) and one ``key: value`` block per row when it does not, so no column is
ever cut. ``--json`` replaces the tables with one JSON document (see :func:`print_json`).
"""

from __future__ import annotations

import json
import os

from rich.console import Console
from rich.table import Table

from .formatting import fmt_num, fmt_p, inference_text, lack_of_fit_text

out = Console(highlight=False, soft_wrap=True)
"""stdout: what a command found. ``interventions.progress.console`` (stderr) carries everything else."""

VERDICT_NAMES = {"H1": "H1 zero MLP -> no sink", "H2": "H2 norm -> lifetime", "H3": "H3 swap -> suppressed",
                 "H4": "H4 mask -> compensation"}


def _plain_width() -> int:
    try:
        return max(40, int(os.environ.get("COLUMNS", "")))
    except ValueError:
        return 120


def show_table(title: str, columns: list[str], rows: list[list[str]], *, caption: str | None = None,
               right: tuple[str, ...] = ()) -> None:
    """Print one table to stdout, fitted to the terminal, or as plain text when not a terminal."""
    rows = [[str(c) for c in row] for row in rows]
    if out.is_terminal:
        table = Table(title=title, caption=caption)
        for col in columns:
            table.add_column(col, justify="right" if col in right else "left",
                             overflow="fold")
        for row in rows:
            table.add_row(*row)
        out.print(table)
        return
    widths = [max([len(col)] + [len(row[i]) for row in rows]) for i, col in enumerate(columns)]
    lines = [title]
    if sum(widths) + 2 * (len(widths) - 1) <= _plain_width():
        def line(cells):
            return "  ".join(c.rjust(w) if col in right else c.ljust(w)
                             for c, w, col in zip(cells, widths, columns)).rstrip()
        lines += [line(columns), line(["-" * w for w in widths])] + [line(row) for row in rows]
    else:  # too wide to align: one block per row
        key_width = max(len(c) for c in columns)
        for row in rows:
            lines.append("")
            lines += [f"  {col.ljust(key_width)}  {cell}" for col, cell in zip(columns, row)]
    if caption:
        lines.append(caption)
    out.print("\n".join(lines) + "\n", markup=False)


def print_json(document) -> None:
    """One JSON document on stdout (``--json``): what the tables show, for machines."""
    from interventions.jsonable import to_jsonable

    out.print_json(json.dumps(to_jsonable(document)))


def print_detection(result) -> None:
    sinks = result.sinks
    n_traces = len(result.traces)
    primary = sinks[sinks.kind == "primary"]
    secondary = sinks[sinks.kind == "secondary"]
    missing = int(result.traces["no_primary"].sum()) if "no_primary" in result.traces else 0
    out.print(f"{n_traces} traces: {len(primary)} primary sinks, {len(secondary)} secondary sinks"
              + (f"; {missing} traces without a primary sink" if missing else ""), markup=False)
    if len(primary):
        spots = primary.groupby(["position", "l_start"]).size()
        out.print("primary sinks (position @ onset layer: traces): "
                  + ", ".join(f"{p} @ {o}: {n}" for (p, o), n in spots.items()), markup=False)
    if len(result.levels):
        show_table("secondary sink levels", ["l_start", "lifetime", "count"],
                   [[r.l_start, r.lifetime, r.count] for r in result.levels.itertuples()],
                   right=("l_start", "lifetime", "count"))
    if len(result.tokens):
        show_table("secondary sink tokens", ["token", "id", "count", "share"],
                   [[repr(r.token), r.token_id, r.count, f"{r.share:.1%}"] for r in result.tokens.head(10).itertuples()],
                   right=("id", "count", "share"))


def detection_json(result) -> dict:
    sinks = result.sinks
    return {"traces": len(result.traces), "primary_sinks": int((sinks.kind == "primary").sum()),
            "secondary_sinks": int((sinks.kind == "secondary").sum()),
            "levels": result.levels.to_dict(orient="records"), "tokens": result.tokens.to_dict(orient="records")}


def _fmt(value, pattern="{:.3f}") -> str:
    try:
        if value != value:  # NaN
            return "-"
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def print_run_summary(result) -> None:
    """Per condition and target set: targets, sinks present, mean lifetime, sink score, KL; the
    condition's matched controls beside (one row per target set, so two sets edited by one
    condition are never averaged)."""
    summary = result.summary
    if summary.empty:
        out.print("no targets were intervened on", markup=False)
        return
    if "target_set" not in summary:  # a summary.csv written before target sets had rows of their own
        summary = summary.assign(target_set="")
    columns = ["condition", "targets", "n", "sink%", "life", "score", "KL", "c.sink%", "c.life", "c.KL"]
    targets = summary[~summary.is_control]
    controls = summary[summary.is_control].drop_duplicates("condition").set_index("condition")
    rows = []
    for _, row in targets.iterrows():
        cond = row.condition
        ctrl = controls.loc[cond] if cond in controls.index else None
        rows.append([
            cond, str(row.target_set), str(int(row.targets)), f"{_fmt(row.sinks_clean, '{:.0%}')}->{_fmt(row.sinks_after, '{:.0%}')}",
            _fmt(row.mean_lifetime, "{:.1f}"), _fmt(row.mean_sink_score), _fmt(row.mean_kl, "{:.4f}"),
            "-" if ctrl is None else _fmt(ctrl.sinks_after, "{:.0%}"),
            "-" if ctrl is None else _fmt(ctrl.mean_lifetime, "{:.1f}"),
            "-" if ctrl is None else _fmt(ctrl.mean_kl, "{:.4f}"),
        ])
    show_table(f"{result.manifest.get('spec_name', '')}: clean vs intervened", columns, rows,
               caption="targets: the spec's target set; n: targets; sink%: share that are sinks (clean -> after); life: mean lifetime after; "
                       "score: sink score one layer after the edit; c.*: matched controls",
               right=tuple(columns[2:]))


def flat_verdict(v: dict) -> dict:
    """A verdict (or component) dict with its ``ci`` pair as ``ci_low``/``ci_high`` and ``effect`` as
    ``estimate``, the shape :func:`~.formatting.inference_cells` reads."""
    ci = v.get("ci") or [None, None]
    return {**v, "estimate": v.get("effect"), "ci_low": ci[0], "ci_high": ci[1]}


def verdict_table(stats: dict) -> list[tuple[str, str, str]]:
    """(hypothesis, verdict, one-line evidence) per hypothesis of ``stats``.

    The evidence shows the effect with its CI and p only where the test has them: an exact zero
    says so, a degenerate estimate gives its reason, and neither shows a CI or a p-value.
    """
    rows = []
    for key, v in stats.get("verdicts", {}).items():
        effect = v.get("effect")
        detail = v.get("reason", "")
        if isinstance(effect, (int, float)) and effect == effect and abs(effect) != float("inf"):
            detail = f"effect {inference_text(flat_verdict(v))}; {detail}"
        rows.append((key, v.get("verdict", "?"), detail))
    return rows


def print_stats(stats: dict) -> None:
    """Verdict table plus the two norm laws, one line each."""
    colors = {"supported": "green", "not supported": "red", "inconclusive": "yellow"}
    rows = []
    for key, verdict, detail in verdict_table(stats):
        color = colors.get(verdict)
        shown = f"[{color}]{verdict}[/{color}]" if color and out.is_terminal else verdict
        rows.append([VERDICT_NAMES.get(key, key), shown, detail])
    if rows:
        show_table("hypothesis verdicts (pre-declared tests, rule in report.md)", ["hypothesis", "verdict", "evidence"],
                   rows)
    for line in stats_lines(stats):
        out.print(line, markup=False)


def stats_lines(stats: dict) -> list[str]:
    """One line per norm law; exact zeros and degenerate fits say so instead of showing a CI or p."""
    lines = []
    ns = stats.get("norm_score", {})
    if ns.get("estimable"):
        lines.append(f"norm -> score: slope {inference_text(ns, estimate='slope')} (log ratio per log norm, "
                     f"{ns.get('window') or 'all'}-layer window), R2 {fmt_num(ns.get('r2'), 2)}, "
                     f"{ns.get('n_sinks')} sinks / {ns.get('n_traces')} traces")
        lof = lack_of_fit_text(ns.get("lack_of_fit") or {})
        if lof:
            lines.append(f"norm -> score log-linear form: {lof}")
    elif ns:
        lines.append(f"norm -> score: not estimable ({ns.get('reason', 'no data')})")
    nl = stats.get("norm_lifetime", {})
    if nl.get("estimable"):
        rho = nl.get("spearman", {})
        if rho.get("rho") is None:
            lines.append(f"norm -> lifetime: Spearman rho undefined ({rho.get('note', 'constant values')})")
        else:
            lines.append(f"norm -> lifetime: Spearman rho {fmt_num(rho.get('rho'))} "
                         f"(permutation p {fmt_p(rho.get('p_perm'))}), {nl.get('n_distinct_lifetimes')} distinct "
                         "lifetimes")
    elif nl:
        lines.append(f"norm -> lifetime: not estimable ({nl.get('reason', 'no data')})")
    return lines
