"""``report.md``, ``reproduce.json`` and the figures of :func:`interventions.studies.reproduce.reproduce`.

Everything here reads the phase records (``phases/<name>.json``); nothing runs a model. Each
figure is the paper's figure of the same number drawn from our measurements; a part whose input
is missing (no secondary sinks, a phase not run) gets one line saying so instead.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from .figure_style import COLORS, SITE_LABEL, SITE_ORDER, plt, styled

DPI = 100
NO_SINKS = "no secondary sinks on these traces"


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return path.name


@styled
def fig2_levels(detect: dict, path: Path) -> str | None:
    """Fig. 2: secondary sink levels as (l_start, lifetime) counts."""
    rows = pd.DataFrame(detect.get("level_counts") or [])
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    ax.scatter(rows["l_start"], rows["lifetime"], s=20 + 300 * rows["count"] / rows["count"].max(),
               color=COLORS["secondary"], alpha=0.7)
    for r in rows.itertuples():
        ax.annotate(str(r.count), (r.l_start, r.lifetime), ha="center", va="center", fontsize=7)
    ax.set_xlabel("$l_{start}$ (first sink layer)")
    ax.set_ylabel("lifetime (layers)")
    ax.set_xlim(-0.5, detect["layers"] - 0.5)
    ax.set_title(f"Sink levels ({detect['n_secondary']} secondary sinks, {detect['n_traces']} traces)")
    ax.grid(alpha=0.3)
    return _save(fig, path)


@styled
def fig3_positions(detect: dict, path: Path) -> str | None:
    """Fig. 3: secondary sinks by token index, coloured by l_start."""
    rows = pd.DataFrame(detect.get("sinks") or [])
    if rows.empty:
        return None
    fig, ax = plt.subplots(figsize=(6.0, 2.8))
    sc = ax.scatter(rows["position"], rows["trace"], c=rows["l_start"], cmap="viridis", s=14)
    fig.colorbar(sc, ax=ax, label="$l_{start}$")
    if detect.get("shared_prefix_tokens", 0) > 1:
        ax.axvspan(0, detect["shared_prefix_tokens"], color="grey", alpha=0.15, label="prefix every trace shares")
        ax.legend(loc="upper right", frameon=False)
    ax.set_xlabel("token index")
    ax.set_ylabel("trace")
    ax.set_title("Secondary sinks by token index")
    return _save(fig, path)


@styled
def fig4_cosines(origin: dict, path: Path) -> str | None:
    """Fig. 4 right: cosine to the primary sink of the future sinks at l_start, through the MLP."""
    rows = pd.DataFrame(origin.get("cosines") or [])
    if rows.empty:
        return None
    cols = [("hidden_cos_before", "hidden in\n($l_{start}-1$)"), ("mlp_in_cos", "MLP input"),
            ("mlp_out_cos", "MLP output"), ("hidden_cos", "hidden out\n($l_{start}$)")]
    fig, ax = plt.subplots(figsize=(4.6, 3.0))
    data = [rows[c].dropna().to_numpy(float) for c, _ in cols]
    ax.boxplot(data, showfliers=True)
    ax.set_xticks(range(1, len(cols) + 1), [lab for _, lab in cols])
    ax.set_ylabel("cosine to the primary sink")
    ax.set_ylim(-1.05, 1.05)
    ax.set_title(f"Through the $l_{{start}}$ MLP ({len(rows)} future sinks)")
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, path)


@styled
def fig5_pcs(origin: dict, path: Path) -> str | None:
    """Fig. 5: each PC of the future sinks' MLP inputs (+-alpha) through the MLP: output norm and cosine."""
    rows = pd.DataFrame(origin.get("probe") or [])
    if rows.empty:
        return None
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(6.4, 2.8))
    for sign, off, color in (("+", -0.2, COLORS["secondary"]), ("-", 0.2, COLORS["median"])):
        g = rows[rows["sign"].astype(str) == sign]
        a1.bar(g["pc"] + off, g["out_norm"], width=0.4, color=color, label=f"{sign}alpha PC")
        a2.bar(g["pc"] + off, g["out_cos"], width=0.4, color=color, label=f"{sign}alpha PC")
    floor = (origin.get("numbers") or {}).get("norm_floor")
    if floor:
        a1.axhline(floor, color="black", ls=":", lw=1, label="sink-size floor")
    a1.set_xlabel("PC")
    a1.set_ylabel("MLP output norm")
    a2.set_xlabel("PC")
    a2.set_ylabel("cosine to the sink direction")
    a2.set_ylim(-1.05, 1.05)
    a1.legend(frameon=False, fontsize=7)
    fig.suptitle("PCs of the MLP inputs through the MLP")
    fig.tight_layout()
    return _save(fig, path)


@styled
def fig7_left(h4: dict, path: Path) -> str | None:
    """Fig. 7 left: primary and secondary sink scores across depth (the valley)."""
    comp = (h4 or {}).get("compensation") or {}
    prof = pd.DataFrame(comp.get("profile") or [])
    if prof.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    ax.plot(prof["layer"], prof["mean"], color=COLORS["primary"], marker="o", ms=3, label="primary sink")
    if prof["ci_low"].notna().any():
        ax.fill_between(prof["layer"], prof["ci_low"], prof["ci_high"], color=COLORS["primary"], alpha=0.15)
    sec = pd.DataFrame((h4 or {}).get("secondary_score_by_layer") or [])
    if not sec.empty:
        ax.plot(sec["layer"], sec["estimate"], color=COLORS["secondary"], marker="s", ms=3,
                label="secondary sinks (where alive)")
    if comp.get("valley_layer") is not None:
        ax.axvline(comp["valley_layer"], color="black", ls=":", lw=1, label=f"valley (layer {comp['valley_layer']})")
    ax.set_xlabel("layer")
    ax.set_ylabel("sink score (attention received)")
    ax.set_title("Sink scores across depth")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return _save(fig, path)


@styled
def fig8_swap(h3: dict, path: Path) -> str | None:
    """Fig. 8: suppression rate by swap layer for hidden state, attention output and MLP output."""
    rates = pd.DataFrame((h3 or {}).get("swap_rates") or [])
    if rates.empty:
        return None
    fig, ax = plt.subplots(figsize=(5.0, 3.0))
    for site in [s for s in SITE_ORDER if s in set(rates["site"])]:
        g = rates[rates["site"] == site].sort_values("intervened_layer")
        ax.plot(g["intervened_layer"], g["estimate"], marker="o", ms=4, label=SITE_LABEL.get(site, site))
        ok = g["ci_low"].notna()
        ax.errorbar(g.loc[ok, "intervened_layer"], g.loc[ok, "estimate"],
                    yerr=[g.loc[ok, "estimate"] - g.loc[ok, "ci_low"], g.loc[ok, "ci_high"] - g.loc[ok, "estimate"]],
                    fmt="none", ecolor="grey", lw=0.8)
    ax.set_xticks(sorted(int(x) for x in rates["intervened_layer"].unique()))
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("swap layer")
    ax.set_ylabel("future sinks suppressed")
    ax.set_title("Mean swap: suppression by layer")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False, fontsize=7)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------
# text


def _f(x, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return "-"
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    return f"{float(x):.{digits}g}"


def _ci(ci) -> str:
    if not ci or ci[0] is None or ci[1] is None:
        return "no CI"
    return f"[{_f(ci[0])}, {_f(ci[1])}]"


def table2_row(settings: dict, d: dict) -> str:
    top = ", ".join(f"{t['l_start']}: {t['share']:.1%}" for t in d["top3_l_start"]) or "X"
    return (f"| {Path(settings['model']).name} | {'yes' if settings['chat_template'] else 'no'} | {d['layers']} | "
            f"{_f(d['primary_sink_layer'])} | {top} | {d['n_secondary'] or 'X'} |")


def verdict_rows(results: dict) -> list[dict]:
    """One row per verdict record of the four causal phases (what the README's table shows)."""
    rows = []
    for h in ("H1", "H2", "H3", "H4"):
        rec = results.get(h)
        if rec is None:
            rows.append({"hypothesis": h, "verdict": "not run", "line": f"{h}: phase not run"})
            continue
        if rec.get("skipped"):
            rows.append({"hypothesis": h, "verdict": "not run", "line": rec["skipped"]})
            continue
        for key, v in rec["verdicts"].items():
            if key.split("/")[0] != h:
                continue
            u = v.get("units", {})
            rows.append({"hypothesis": h, "key": key, "verdict": v.get("verdict"), "effect": v.get("effect"),
                         "ci": v.get("ci"), "p": v.get("p"), "compared_with": v.get("compared_with"),
                         "n_traces": v.get("n_traces"), "n": v.get("n"),
                         "n_independent": v.get("n_independent"), "effective_units": v.get("effective_units"),
                         "units": u, "reason": v.get("reason")})
    return rows


def write_report(out: Path, settings: dict, results: dict, seconds: float) -> tuple[Path, dict]:
    """Write ``report.md``, ``reproduce.json`` and ``figures/`` from the phase records."""
    from ..store import write_json_atomic, write_text_atomic

    d = results.get("detect")
    o = results.get("origin") or {}
    h2, h3, h4 = results.get("H2") or {}, results.get("H3") or {}, results.get("H4") or {}
    drawn = _draw_figures(out / "figures", d, o, h3, h4)
    L = _header(settings, results, seconds)
    if not d:
        L.append("Detection has not run: nothing else can be reported.\n")
    else:
        L += _section3(settings, d, drawn) + _section4(o, h3, drawn) + _section5(h2, h4, drawn)
    causal, vrows = _causal_checks(results, d)
    L += causal
    report = out / "report.md"
    write_text_atomic(report, "\n".join(L) + "\n")
    record = _record(settings, seconds, drawn, d, o, h2, h3, h4, results, vrows)
    write_json_atomic(out / "reproduce.json", record)
    return report, record


def _draw_figures(figs: Path, d, o: dict, h3: dict, h4: dict) -> dict:
    """The paper's figures this study draws (file names by figure key; None where there is nothing to draw)."""
    drawn = {}
    if d:
        drawn["fig2"] = fig2_levels(d, figs / "fig2_levels.png")
        drawn["fig3"] = fig3_positions(d, figs / "fig3_positions.png")
    if o and not o.get("skipped"):
        drawn["fig4"] = fig4_cosines(o, figs / "fig4_cosines.png")
        drawn["fig5"] = fig5_pcs(o, figs / "fig5_pcs.png")
    drawn["fig7_left"] = fig7_left(h4, figs / "fig7_left_valley.png") if h4 and not h4.get("skipped") else None
    drawn["fig8"] = fig8_swap(h3, figs / "fig8_swap_timeline.png") if h3 and not h3.get("skipped") else None

    return drawn


def _figure_links(drawn: dict, *figures: tuple[str, str]) -> list[str]:
    """Markdown image lines for the ``(key, title)`` figures that were drawn."""
    return [f"![{title}](figures/{drawn[key]})\n" for key, title in figures if drawn.get(key)]


def _header(settings: dict, results: dict, seconds: float) -> list[str]:
    L: list[str] = []
    name = Path(settings["model"]).name
    L.append(f"# The paper on {name}\n")
    L.append(f"Model `{settings['model']}`; traces `{settings['traces']}` (first {settings['max_traces']}, "
             f"{settings['max_tokens'] or 'all'} tokens each, chat template {'on' if settings['chat_template'] else 'off'}); "
             f"the phases took {sum(v.get('seconds', 0) for v in results.values() if isinstance(v, dict)) / 60:.1f} "
             f"min in all ({seconds / 60:.1f} min this invocation): "
             + ", ".join(f"{k} {v.get('seconds', 0):.0f} s" for k, v in results.items() if isinstance(v, dict))
             + ".\n")
    return L


def _section3(settings: dict, d: dict, drawn: dict) -> list[str]:
    """Detection: Table 2's row, Table 1, the levels (Fig. 2), the independent units, Figs. 2-3."""
    L: list[str] = []
    L.append("## Sec. 3: detection\n")
    L.append("**Table 2 row** (primary sink layer: the most common layer where the primary sink appears):\n")
    L.append("| model | chat template | layers | primary sink layer | top-3 l_start (share) | secondary sinks |")
    L.append("| --- | --- | --- | --- | --- | --- |")
    L.append(table2_row(settings, d))
    L.append("")
    if not d["n_secondary"]:
        L.append(f"**No secondary sinks** on these {d['n_traces']} traces: Table 1, Figs. 2-5, 7 (secondary "
                 "part), 8 and H1-H4 need them and are skipped (one line each below).\n")
    else:
        L.append("**Table 1** (secondary sink tokens):\n")
        L.append("| token | id | count | share |")
        L.append("| --- | --- | --- | --- |")
        for t in d["token_table"][:12]:
            L.append(f"| `{t['token']!r}` | {t['token_id']} | {t['count']} | {t['share']:.1%} |")
        L.append("")
        L.append("**Levels (Fig. 2)**: " + ", ".join(f"({r['l_start']}, {r['lifetime']}) x{r['count']}"
                                                    for r in d["level_counts"]) + "\n")
        ua, uo = d["units_all_sinks"], d["units_own_text_sinks"]
        L.append(f"**Independent units.** The traces share their first {d['shared_prefix_tokens']} tokens. "
                 f"All {ua['n_positions']} sinks have {ua['n_independent']} distinct prefixes over "
                 f"{ua['n_traces']} traces ({ua['effective_units']} effective trace units); "
                 f"{d['n_own_text_sinks']} lie in the traces' own text ({uo['n_independent']} distinct prefixes, "
                 f"{uo['n_traces']} traces).\n")
    L += _figure_links(drawn, ("fig2", "Fig. 2: levels"), ("fig3", "Fig. 3: sinks by token index"))

    return L


def _section4(o: dict, h3: dict, drawn: dict) -> list[str]:
    """Where secondary sinks come from: the MLP origin (Figs. 4-5) and the swap timeline (Fig. 8)."""
    L: list[str] = []
    L.append("## Sec. 4: where secondary sinks come from\n")
    if o.get("skipped") or not o:
        L.append(f"Origin (Figs. 4-5): {o.get('skipped', 'phase not run')}.\n")
    else:
        n = o["numbers"]
        L.append(f"At layer {n['layer']} ({n['n_future_sinks']} future sinks): median cosine to the primary sink "
                 f"of the MLP input {_f(n['median_mlp_in_cos'])}, of its output {_f(n['median_mlp_out_cos'])} "
                 f"(min {_f(n['min_mlp_out_cos'])}); hidden state before {_f(n['median_hidden_cos_before'])}, "
                 f"after {_f(n['median_hidden_cos'])}. PCs fed through the MLP (alpha {_f(n['alpha'])}) that come "
                 f"out as a sink-sized vector along the sink direction: {n['pcs_mapping_to_sink'] or 'none'} "
                 f"(norm floor {_f(n['norm_floor'])}). Origin verdict: **{n['verdict']}** "
                 f"({o['verdict'].get('reason', '')}).\n")
        L += _figure_links(drawn, ("fig4", "Fig. 4 right"), ("fig5", "Fig. 5"))
    L.append("**Swap timeline (Fig. 8)**, share of future sinks suppressed by swap layer: "
             + ("H3 not run: " + h3.get("skipped", "phase not run") if not h3 or h3.get("skipped") else
                "; ".join(f"{site} " + ", ".join(f"L{r['intervened_layer']} {_f(r['estimate'], 2)}"
                                                 for r in h3.get("swap_rates") or [] if r["site"] == site)
                          for site in SITE_ORDER if any(r["site"] == site for r in h3.get("swap_rates") or [])))
             + "\n")
    L += _figure_links(drawn, ("fig8", "Fig. 8"))

    return L


def _section5(h2: dict, h4: dict, drawn: dict) -> list[str]:
    """Primary and secondary sinks: the valley (Fig. 7 left) and the norm laws (Fig. 7 mid/right)."""
    L: list[str] = []
    L.append("## Sec. 5: primary and secondary sinks\n")
    if h4 and not h4.get("skipped"):
        c = h4.get("compensation") or {}
        L.append(f"Primary sink score valley at layer {c.get('valley_layer')} (bootstrap CI {c.get('valley_ci')}); "
                 f"secondary l_start range {c.get('l_start_range')}; valley in that range: "
                 f"{c.get('valley_in_l_start_range')} ({_f(c.get('valley_in_range_fraction'))} of draws).\n")
        L += _figure_links(drawn, ("fig7_left", "Fig. 7 left"))
    else:
        L.append(f"Fig. 7 left: {h4.get('skipped', 'the H4 phase has not run') if h4 else 'the H4 phase has not run'}.\n")
    if h2 and not h2.get("skipped"):
        ns, nl = h2.get("norm_score") or {}, h2.get("norm_lifetime") or {}
        L.append("Norm -> score (Fig. 7 mid): " + (
            f"slope {_f(ns.get('slope'))} [{_f(ns.get('ci_low'))}, {_f(ns.get('ci_high'))}], p {_f(ns.get('p'))} "
            f"({ns.get('model')}, {ns.get('se_type')})" if ns.get("estimable") else
            f"not estimable ({ns.get('reason')})") + ".  ")
        sp = nl.get("spearman") or {}
        best = (nl.get("comparison") or {}).get("best")
        levels = (nl.get("isotonic") or {}).get("levels")
        L.append("Norm -> lifetime (Fig. 7 right): " + (
            f"Spearman {_f(sp.get('rho'))} (p_perm {_f(sp.get('p_perm'))}); best fit by BIC {best}"
            + (f" (isotonic plateaus at {levels} layers)" if best == "isotonic" and levels else "")
            if nl.get("estimable") else f"not estimable ({nl.get('reason')})") + ". The run's own figures: "
            f"`runs/{h2['spec']}/report.md`.\n")
    else:
        L.append(f"Norm laws (Fig. 7 mid/right): {h2.get('skipped', 'the H2 phase has not run') if h2 else 'the H2 phase has not run'}.\n")

    return L


def _causal_checks(results: dict, d) -> tuple[list[str], list[dict]]:
    """The verdict table, the independent-unit notes, the functional cost and each verdict's reason."""
    L: list[str] = []
    L.append("## The four causal checks\n")
    L.append("Verdict records as the verdict path gives them (`runs/<spec>/stats.json`); units: target positions, "
             "distinct prefixes among them (positions with the same preceding tokens are one measurement), traces "
             "with a target in their own text, effective trace units.\n")
    L.append("| check | verdict | effect [CI] | p | compared with | n traces | n targets | distinct prefixes | "
             "own-text traces | effective units |")
    L.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    vrows = verdict_rows(results)
    for r in vrows:
        if "key" not in r:
            L.append(f"| {r['hypothesis']} | not run | {r['line']} | | | | | | | |")
            continue
        u = r["units"]
        L.append(f"| {r['key']} | **{r['verdict']}** | {_f(r['effect'])} {_ci(r['ci'])} | {_f(r['p'])} | "
                 f"{r['compared_with']} | {r['n_traces']} | {u.get('n_positions')} | "
                 f"{r['n_independent'] if r['n_independent'] is not None else u.get('n_independent')} | "
                 f"{u.get('n_traces_own_text')} | "
                 f"{r['effective_units'] if r['effective_units'] is not None else u.get('effective_units')} |")
    L.append("")
    if d and d["n_secondary"] and d["shared_prefix_tokens"] > 1 and not d["n_own_text_sinks"]:
        ua = d["units_all_sinks"]
        L.append(f"* **Every secondary sink lies in the {d['shared_prefix_tokens']}-token prefix all traces share** "
                 f"(a template): the tests edit them anyway, but their {ua['n_traces']} traces repeat "
                 f"{ua['n_independent']} distinct measurements ({ua['effective_units']} effective trace unit(s)); "
                 "a trace-level p-value over them overstates the evidence.")
    for h in ("H1", "H2", "H3", "H4"):
        rec = results.get(h) or {}
        for line in (rec.get("too_few"), rec.get("target_note")):
            if line:
                L.append(f"* {line}")
    L.append("")
    L.append("**Functional cost** (change in NLL of each trace's own next token, intervened minus clean, "
             "nats/token; per-trace targets minus controls where there are controls):\n")
    L.append("| check | condition | targets | controls | difference [CI] | p | n traces |")
    L.append("| --- | --- | --- | --- | --- | --- | --- |")
    for h in ("H1", "H2", "H3", "H4"):
        rec = results.get(h) or {}
        fc = rec.get("functional_cost") or {}
        if not fc.get("estimable"):
            continue
        shown = [fc["overall"]] + (fc["by_condition"] if h == "H4" else [])
        for s in shown:
            L.append(f"| {h} | {s['label']} | {_f(s['targets_delta_nll'])} | {_f(s['controls_delta_nll'])} | "
                     f"{_f(s['effect'])} {_ci(s['ci'] if not s.get('exact_null') else None)} | {_f(s['p'])} | "
                     f"{s['n_traces']} |")
    L.append("")
    for r in vrows:
        if "key" in r and r.get("reason"):
            L.append(f"* {r['key']}: {r['reason']}")
    L.append("")
    return L, vrows


def _record(settings, seconds, drawn, d, o, h2, h3, h4, results, vrows) -> dict:
    """Every number the report shows (``reproduce.json``)."""
    from ..store import to_jsonable

    return to_jsonable({"settings": settings, "seconds": seconds, "figures": drawn,
                          "table2": None if not d else {k: d[k] for k in ("layers", "primary_sink_layer",
                                                                          "top3_l_start", "n_secondary",
                                                                          "n_primary", "shared_prefix_tokens",
                                                                          "units_all_sinks",
                                                                          "units_own_text_sinks")},
                          "table1": d["token_table"] if d else None,
                          "levels": d["level_counts"] if d else None,
                          "origin": o.get("numbers") if o else None, "verdicts": vrows,
                          "functional_cost": {h: (results.get(h) or {}).get("functional_cost") for h in
                                              ("H1", "H2", "H3", "H4")},
                          "compensation": {k: v for k, v in (h4.get("compensation") or {}).items() if k != "profile"}
                          if h4 else None,
                          "swap_rates": h3.get("swap_rates") if h3 else None,
                          "norm_score": h2.get("norm_score") if h2 else None,
                          "norm_lifetime": h2.get("norm_lifetime") if h2 else None})


def load_record(out: str | Path) -> dict:
    """``reproduce.json`` of a finished study folder."""
    return json.loads((Path(out) / "reproduce.json").read_text())
