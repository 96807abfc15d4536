"""Terminal tables (rich) for what the commands found."""

from __future__ import annotations

from rich.table import Table

from ..progress import console


def print_detection(result) -> None:
    sinks = result.sinks
    n_traces = len(result.traces)
    primary = sinks[sinks.kind == "primary"]
    secondary = sinks[sinks.kind == "secondary"]
    missing = int(result.traces["no_primary"].sum()) if "no_primary" in result.traces else 0
    console.print(f"{n_traces} traces: {len(primary)} primary sinks, {len(secondary)} secondary sinks"
                  + (f"; {missing} traces without a primary sink" if missing else ""), highlight=False)
    if len(primary):
        spots = primary.groupby(["position", "l_start"]).size()
        console.print("primary sinks (position @ onset layer: traces): "
                      + ", ".join(f"{p} @ {o}: {n}" for (p, o), n in spots.items()), highlight=False)
    if len(result.levels):
        table = Table(title="secondary sink levels")
        for col in ("l_start", "lifetime", "count"):
            table.add_column(col, justify="right")
        for row in result.levels.itertuples():
            table.add_row(str(row.l_start), str(row.lifetime), str(row.count))
        console.print(table)
    if len(result.tokens):
        table = Table(title="secondary sink tokens")
        for col in ("token", "id", "count", "share"):
            table.add_column(col, justify="right")
        for row in result.tokens.head(10).itertuples():
            table.add_row(repr(row.token), str(row.token_id), str(row.count), f"{row.share:.1%}")
        console.print(table)


def _fmt(value, pattern="{:.3f}") -> str:
    try:
        if value != value:  # NaN
            return "-"
        return pattern.format(value)
    except (TypeError, ValueError):
        return str(value)


def print_run_summary(result) -> None:
    """Per condition: targets, sinks present, mean lifetime, sink score, KL; controls beside."""
    summary = result.summary
    if summary.empty:
        console.print("no targets were intervened on", highlight=False)
        return
    table = Table(title=f"{result.manifest.get('spec_name', '')}: clean vs intervened",
                  caption="n: targets; sink%: share that are sinks (clean -> after); life: mean lifetime after; "
                          "score: sink score one layer after the edit; c.*: matched controls")
    table.add_column("condition", no_wrap=True)
    for col in ("n", "sink%", "life", "score", "KL", "c.sink%", "c.life", "c.KL"):
        table.add_column(col, justify="right", no_wrap=True)
    targets = summary[~summary.is_control].set_index("condition")
    controls = summary[summary.is_control].set_index("condition")
    for cond, row in targets.iterrows():
        ctrl = controls.loc[cond] if cond in controls.index else None
        table.add_row(
            cond, str(int(row.targets)), f"{_fmt(row.sinks_clean, '{:.0%}')}->{_fmt(row.sinks_after, '{:.0%}')}",
            _fmt(row.mean_lifetime, "{:.1f}"), _fmt(row.mean_sink_score), _fmt(row.mean_kl, "{:.4f}"),
            "-" if ctrl is None else _fmt(ctrl.sinks_after, "{:.0%}"),
            "-" if ctrl is None else _fmt(ctrl.mean_lifetime, "{:.1f}"),
            "-" if ctrl is None else _fmt(ctrl.mean_kl, "{:.4f}"),
        )
    console.print(table)


def print_stats(stats: dict) -> None:
    """Verdict table plus the two norm laws, one line each."""
    from ..analysis import verdict_table

    table = Table(title="hypothesis verdicts (pre-declared tests, rule in report.md)")
    table.add_column("hypothesis", no_wrap=True)
    table.add_column("verdict", no_wrap=True)
    table.add_column("evidence")
    colors = {"supported": "green", "not supported": "red", "inconclusive": "yellow"}
    names = {"H1": "H1 zero MLP -> no sink", "H2": "H2 norm -> lifetime", "H3": "H3 swap -> suppressed",
             "H4": "H4 mask -> compensation"}
    for key, verdict, detail in verdict_table(stats):
        color = colors.get(verdict, "white")
        table.add_row(names.get(key, key), f"[{color}]{verdict}[/{color}]", detail)
    console.print(table)
    ns = stats.get("norm_score", {})
    if ns.get("estimable"):
        console.print(f"norm -> score: slope {ns['slope']:.3f} [{ns['ci_low']:.3f}, {ns['ci_high']:.3f}] "
                      f"(log ratio per log norm), R2 {ns['r2']:.2f}, {ns['n_sinks']} sinks / {ns['n_traces']} traces",
                      highlight=False)
    nl = stats.get("norm_lifetime", {})
    if nl.get("estimable"):
        rho = nl.get("spearman", {})
        console.print(f"norm -> lifetime: Spearman rho {rho.get('rho', float('nan')):.2f} "
                      f"(permutation p {rho.get('p_perm')}), {nl.get('n_distinct_lifetimes')} distinct lifetimes",
                      highlight=False)
