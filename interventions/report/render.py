"""``report.md`` of a run folder: provenance, verdicts, key statistics and figures.

:func:`render_report` is called by :func:`interventions.stats.analysis.analyze_run` after
``stats.json`` is written. Figures go to ``<run>/figures/`` (see :mod:`.figures`); a figure
whose data the run lacks is replaced by a one-line note, so a run with no secondary sinks
still gets a complete report.
"""

from __future__ import annotations

import math
from pathlib import Path

from interventions.spec.conditions import kinds_with

from .formatting import fmt_num as _num
from .formatting import fmt_p as _p
from .formatting import inference_cells, inference_text, lack_of_fit_text, md_cell, md_table
from .tables import flat_verdict

HYPOTHESES = {
    "H1": "zeroing the l_start MLP output prevents the secondary sink",
    "H2": "scaling the MLP output norm creates sinks whose lifetime grows with the norm",
    "H3": "mean-swapping suppresses future sinks, more at later layers",
    "H4": "masking attention to secondary sinks changes the primary sink beyond renormalisation, and predictions",
}
"""Short statements for hypotheses a run did not test (their stats entry carries no text)."""

HOW_TO_READ = [
    ("Verdict", "each hypothesis is one pre-declared test judged by the rule below: *supported* needs p < alpha "
                "and a 95% CI that excludes 0 on the predicted side; *not supported* means the CI excludes 0 on "
                "the other side or lies entirely within the declared equivalence margin; anything else, or too "
                "few targets or traces, is *inconclusive*."),
    ("Trace as unit", "tokens of one trace share a forward pass, so every p-value flips the signs of whole-trace "
                      "sums and its CI inverts that test (with fewer than 6 traces no sign-flip p can go below 0.05 "
                      "and the CI is unbounded), regressions use CR2 trace-cluster errors with Bell-McCaffrey df, "
                      "and bootstraps resample whole traces."),
    ("Exact zero / degenerate", "an *exact zero* is an estimate whose every per-token change lies within the "
                                "exact-null tolerance; a *degenerate* estimate has no usable variance (every trace "
                                "agrees, a collapsed sandwich variance, a fit that did not converge). Neither gets "
                                "a CI or a p-value; the reason is printed instead."),
    ("Norm -> score slope", "the elasticity of the secondary/primary sink-score ratio with respect to the l_start "
                            "MLP-output norm (OLS of log ratio on log norm with one intercept per layer, "
                            "trace-clustered CI); R^2 within is the share of within-layer variance it explains."),
    ("Spearman rho", "rank correlation of sink lifetime with the l_start norm (permutation p): does a larger "
                     "norm mean a longer life?"),
    ("Plateaus / segmented", "the isotonic fit is the best non-decreasing step function of log norm (its blocks "
                             "with >= 3 sinks are plateaus, i.e. sink levels); the segmented fit is the "
                             "piecewise-linear fit with 0-2 breakpoints chosen by BIC (lower BIC is better)."),
    ("Poisson slope", "change in log expected lifetime per unit log norm (a count-model check; dispersion >> 1 "
                      "means the Poisson CI is too narrow)."),
    ("Dose-response slope", "within-token change of lifetime (layers) or sink score per unit log(scale factor); "
                            "the difference row is target slope minus control slope."),
    ("Compensation valley", "the layer (after the early peak) where the mean primary sink score is lowest; the "
                            "paper predicts it falls within the secondary sinks' l_start range."),
    ("Per-layer effects", "mean intervened-minus-clean change of a measure at each layer; listed layers have "
                          "Holm-adjusted p_adj < 0.05 across all layers and conditions of that measure "
                          "(+ increase, - decrease)."),
]


# --------------------------------------------------------------------------------------------
# formatting
# --------------------------------------------------------------------------------------------


def _compact_layers(layers) -> str:
    layers = sorted({int(x) for x in layers})
    if not layers:
        return ""
    runs, start, prev = [], layers[0], layers[0]
    for x in layers[1:]:
        if x == prev + 1:
            prev = x
            continue
        runs.append((start, prev))
        start = prev = x
    runs.append((start, prev))
    return ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in runs)


# --------------------------------------------------------------------------------------------
# sections
# --------------------------------------------------------------------------------------------


def _provenance(manifest: dict, stats: dict) -> list[str]:
    model = manifest.get("model") or {}
    versions = manifest.get("versions") or {}
    tool = manifest.get("tool") or {}
    spec = manifest.get("spec") or {}
    commit = tool.get("commit") or "unknown"
    if tool.get("dirty"):
        commit += " (uncommitted changes)"
    shape = ", ".join(f"{k.removeprefix('n_')} {model[k]}" for k in ("n_layers", "n_heads", "n_hidden") if k in model)
    done = manifest.get("traces_completed") or []
    status, finished = manifest.get("status", "?"), manifest.get("finished_utc", "?")
    if status == "analyzing":  # this report is the run's last file: once it is written, the run is complete
        from datetime import datetime, timezone

        status, finished = "complete", datetime.now(timezone.utc).isoformat(timespec="seconds")
    rows = [
        ["model", f"{model.get('source', spec.get('model', '?'))}"
                  + (f" ({model.get('model_type')}; {shape})" if model.get("model_type") else "")],
        ["dtype / device", f"{model.get('dtype', spec.get('dtype', '?'))} / "
                           f"{model.get('device', spec.get('device', '?'))}"
                           + (f", attention {model['attn_implementation']}" if model.get("attn_implementation")
                              else "")],
        ["traces", f"{len(done)} of {manifest.get('traces_total', '?')} completed ({spec.get('traces', '?')})"],
        ["seed", str(manifest.get("seed", stats.get("seed")))],
        ["spec hash", f"`{manifest.get('spec_hash', '?')}`"],
        ["tool commit", f"`{commit}`"],
        ["status", f"{status}; created {manifest.get('created_utc', '?')}, finished {finished}"],
        ["versions", ", ".join(f"{k} {v}" for k, v in versions.items() if v and k in
                               ("python", "interventions", "torch", "transformers", "numpy", "scipy", "statsmodels",
                                "pandas", "pyvene"))],
        ["command", f"`{manifest.get('command', '?')}`"],
    ]
    facts = manifest.get("run_facts") or {}
    if facts:
        rows.append(["run facts", f"modal l_start {facts.get('modal_l_start')}, "
                                  f"{len(facts.get('sink_token_ids') or [])} sink token id(s)"])
    if model.get("folder_sha256"):
        rows.append(["model files sha256", f"`{model['folder_sha256']}`"])
    return ["## Provenance", ""] + md_table(["", ""], rows)


def _verdicts(stats: dict) -> list[str]:
    verdicts = stats.get("verdicts") or {}
    lines = ["## Verdicts", ""]
    if not verdicts:
        return lines + ["No hypothesis was tested.", ""]
    rows = []
    for key, v in verdicts.items():
        n = v.get("n")
        n_text = "–" if n is None else \
            f"{n}" + (f" ({v['n_traces']} traces)" if v.get("n_traces") is not None else "")
        text = v.get("hypothesis", "")
        text = text.split(": ", 1)[1] if ": " in text else HYPOTHESES.get(key, text if text != key else "")
        rows.append([f"**{key}** {text}", f"**{v.get('verdict', '?')}**",
                     v.get("test", "–"), *inference_cells(flat_verdict(v)), n_text,
                     v.get("reason", "")])
    lines += md_table(["hypothesis", "verdict", "test", "effect", "95% CI", "p", "n", "reason"], rows)
    comp_rows = []
    for key, v in verdicts.items():
        comps = v.get("components") or []
        if len(comps) < 2:
            continue
        for c in comps:
            comp_rows.append([key, c.get("name"), c.get("verdict"), *inference_cells(flat_verdict(c)), _num(c.get("n")),
                              _num(c.get("margin")), c.get("reason", "")])
    if comp_rows:
        lines += ["Components of compound hypotheses (each must be supported):", ""]
        lines += md_table(["", "component", "verdict", "effect", "95% CI", "p", "n", "margin", "reason"], comp_rows)
    rested = [f"- **{k}** rests on {', '.join(f'`{c}`' for c in v['conditions'])}; compared with "
              f"{v.get('compared_with')}" + (f" ({', '.join(f'`{c}`' for c in v['comparison_conditions'])})"
                                             if v.get("comparison_conditions") else "")
              for k, v in verdicts.items() if v.get("conditions")]
    if rested:
        lines += ["Conditions each verdict rests on (one verdict per hypothesis and condition family, never "
                  "pooled across sites or layers):", "", *rested, ""]
    for t in stats.get("tautologies") or []:
        lines += [f"- Tautological, left out of every verdict: `{t['condition']}`: {t['reason']}"]
    if stats.get("tautologies"):
        lines += [""]
    rule = next((v.get("rule") for v in verdicts.values() if v.get("rule")), None)
    if rule is None:
        from interventions.stats import VERDICT_RULE

        rule = VERDICT_RULE
    alpha = next((v.get("alpha") for v in verdicts.values() if v.get("alpha") is not None), 0.05)
    lines += [f"**Verdict rule** (alpha = {alpha}): {rule}", ""]
    return lines


def _norm_score(ns: dict) -> list[str]:
    lines = ["### Norm -> sink score (paper Fig. 7 mid)", ""]
    if not ns.get("estimable"):
        return lines + [f"Not estimable: {ns.get('reason', 'no data')}.", ""]
    rows = [["pooled slope (elasticity)", *inference_cells(ns, estimate="slope"),
             f"R^2 {_num(ns.get('r2'))}, within-layer R^2 {_num(ns.get('r2_within'))}; {ns.get('se_type', '')} SE"
             + (f", {_num(ns.get('df'))} df" if ns.get("df") is not None else "")]]
    mixed = ns.get("mixed") or {}
    if mixed.get("run") and mixed.get("slope") is not None:
        rows.append(["mixed model (random trace intercept)", *inference_cells(mixed, estimate="slope"),
                     "converged" if mixed.get("converged") else "did not converge"])
    elif mixed.get("run"):
        rows.append(["mixed model (random trace intercept)", "–",
                     f"degenerate: {mixed.get('degenerate_reason') or 'no estimate'}", "–", "check only"])
    if ns.get("steepest_layer") is not None:
        rows.append([f"steepest layer ({ns['steepest_layer']})", _num(ns.get("steepest_slope")), "– (descriptive)",
                     "–", ns.get("steepest_note") or "descriptive: argmax of per-layer slopes, no CI or test"])
    lines += md_table(["estimate", "value", "95% CI", "p", "note"], rows)
    window = ns.get("window")
    design = (f"fixed window of attention layers l_start+1 .. l_start+{window} for every sink, "
              f"{ns.get('n_dead_rows') if ns.get('n_dead_rows') is not None else '?'} of the rows after the sink "
              f"died" if window else "every recorded sink-layer row")
    lines += [f"n = {ns.get('n_rows')} sink-layer rows, {ns.get('n_sinks')} sinks, {ns.get('n_traces')} traces; "
              f"{design}; model `{ns.get('model')}`.", ""]
    lof_line = lack_of_fit_text(ns.get("lack_of_fit") or {})
    if lof_line:
        lines += [f"Log-linear form: {lof_line}.", ""]
    per_layer = [r for r in ns.get("per_layer") or []]
    if per_layer:
        cells = []
        for r in per_layer:
            if r.get("estimable"):
                cells.append(f"layer {r['layer']}: {inference_text(r, estimate='slope')}")
            else:
                cells.append(f"layer {r['layer']}: not estimable ({r.get('reason')})")
        lines += ["Per-layer slopes (descriptive; each layer alone): " + "; ".join(cells) + ".", ""]
    return lines


def _norm_lifetime(nl: dict) -> list[str]:
    lines = ["### Norm -> lifetime (paper Fig. 7 right)", ""]
    if not nl.get("estimable"):
        return lines + [f"Not estimable: {nl.get('reason', 'no data')} "
                        f"({nl.get('n_sinks', 0)} sinks).", ""]
    rows = []
    sp = nl.get("spearman") or {}
    rows.append(["Spearman rho", _num(sp.get("rho")), "–", _p(sp.get("p_perm")),
                 f"permutation p ({sp.get('n_perm')} permutations)" if sp.get("rho") is not None
                 else sp.get("note", "")])
    lin = nl.get("linear") or {}
    if lin:
        rows.append(["linear slope (layers per log norm)", *inference_cells(lin, estimate="slope"),
                     f"R^2 {_num(lin.get('r2'))}, BIC {_num(lin.get('bic'), 4)}"])
    po = nl.get("poisson") or {}
    if po.get("estimable"):
        note = (f"rate ratio {_num(po.get('rate_ratio_per_log_norm'))} per log norm, "
                f"dispersion {_num(po.get('dispersion'))}")
        unc = po.get("uncensored_only") or {}
        if unc.get("estimable"):
            note += f"; uncensored only: slope {inference_text(unc, estimate='slope')}"
        rows.append(["Poisson slope (log lifetime per log norm)", *inference_cells(po, estimate="slope"), note])
    lines += md_table(["estimate", "value", "95% CI", "p", "note"], rows)
    if nl.get("plateaus_estimable"):
        iso = nl.get("isotonic") or {}
        plateaus = iso.get("plateaus") or []
        levels = ", ".join(f"{_num(b['level'])} (n={b['n']}, norm {_norm_range(b)})" for b in plateaus)
        lines.append(f"- Isotonic fit: {len(iso.get('blocks') or [])} blocks, {len(plateaus)} plateau(s) with >= "
                     f"{iso.get('min_plateau_n')} sinks" + (f": lifetime {levels}" if levels else "") + ".")
        seg = nl.get("segmented") or {}
        best = seg.get("best")
        chosen = next((f for f in seg.get("fits", []) if f.get("n_breakpoints") == best), None)
        if chosen:
            bps = ", ".join(f"log norm {_num(b)} (norm {_num(math.exp(b))})" for b in chosen.get("breakpoints", []))
            slopes = ", ".join(_num(s["slope"]) for s in chosen.get("segments", []))
            lines.append(f"- Segmented fit, best by BIC: {best} breakpoint(s)" + (f" at {bps}" if bps else "")
                         + f"; segment slopes {slopes}.")
    else:
        lines.append(f"- Plateaus not estimable: {nl.get('plateaus_reason')}.")
    comp = nl.get("comparison") or {}
    if comp.get("bic"):
        lines.append("- BIC: " + ", ".join(f"{k} {_num(v, 4)}" for k, v in comp["bic"].items())
                     + f"; best: **{comp.get('best')}**.")
    lines += [f"- n = {nl.get('n_sinks')} sinks in {nl.get('n_traces')} traces, {nl.get('n_censored')} censored "
              f"(alive at the last layer), {nl.get('n_distinct_lifetimes')} distinct lifetimes.", ""]
    return lines


def _dose(dose: dict | None) -> list[str]:
    lines = ["### Dose-response of scaled MLP output", ""]
    if not dose:
        return lines + ["The run has no scale condition.", ""]
    rows = []
    for group, res in dose.items():
        if not res.get("estimable"):
            rows.append([group, "–", "–", "–", "–", "–", res.get("reason", "not estimable")])
            continue
        factors = ", ".join(_num(f) for f in res.get("factors", []))
        for measure in ("lifetime", "sink_score"):
            for side in ("targets", "controls"):
                r = (res.get(side) or {}).get(measure) or {}
                if not r:
                    continue
                trend = r.get("trend") or {}
                note = f"Page trend p {_p(trend.get('p_perm'))}" if trend.get("estimable") else r.get("reason", "")
                if r.get("estimable") is False:
                    rows.append([group, measure, side, "–", "–", "–", r.get("reason", "not estimable")])
                    continue
                rows.append([group, measure, side, *inference_cells(r, estimate="slope"),
                             f"n={r.get('n_units', res.get(f'n_{side}'))}; factors {factors}; {note}"])
            d = (res.get("difference") or {}).get(measure) or {}
            if d.get("estimable"):
                rows.append([group, measure, "targets - controls", *inference_cells(d, estimate="slope_difference"),
                             "slope difference"])
    lines += md_table(["group", "measure", "tokens", "slope per log factor", "95% CI", "p", "note"], rows)
    return lines


def _compensation(comp: dict, has_mask: bool) -> list[str]:
    lines = ["### Compensation (paper Fig. 7 left)", ""]
    if not comp or comp.get("estimable") is False and not comp.get("profile"):
        return lines + [f"Not estimable: {(comp or {}).get('reason', 'no clean profile')}.", ""]
    ls = comp.get("l_start") or {}
    ci = comp.get("valley_ci") or [None, None]
    lines.append(f"- Valley of the primary sink score: layer **{comp.get('valley_layer')}** (searched from layer "
                 f"{comp.get('valley_from')}; bootstrap 95% range {ci[0]}-{ci[1]}; {comp.get('n_traces')} traces).")
    if ls.get("n_sinks"):
        lines.append(f"- Secondary sink l_start: {ls.get('min')}-{ls.get('max')} (mode {ls.get('mode')}, "
                     f"{ls.get('n_sinks')} sinks); valley within [l_start min - 1, max + 1] = "
                     f"{comp.get('l_start_range')}: **{_num(comp.get('valley_in_l_start_range'))}** "
                     f"(in {_num(comp.get('valley_in_range_fraction'))} of bootstrap replicates).")
    else:
        lines.append("- No secondary sinks in the clean run: the valley cannot be compared with l_start.")
    mask = comp.get("mask") or {}
    if not has_mask:
        mask = {}
    if mask.get("estimable"):
        control = {"estimate": mask.get("control_effect"), "ci_low": mask.get("control_ci_low"),
                   "ci_high": mask.get("control_ci_high")}
        did = {"estimate": mask.get("did"), "ci_low": mask.get("did_ci_low"), "ci_high": mask.get("did_ci_high"),
               "p": mask.get("p_did"), "exact_zero": mask.get("did_exact_zero"),
               "degenerate": mask.get("did_degenerate"), "degenerate_reason": "zero between-trace variance"}
        lines.append(f"- Masking attention to the targets changes the primary sink score in the masked layers by "
                     f"{inference_text(mask, estimate='effect')} "
                     f"(controls {inference_text(control) if control['estimate'] is not None else 'none'}; "
                     f"targets minus controls {inference_text(did) if did['estimate'] is not None else '–'}; "
                     f"{mask.get('n_targets')} targets, {mask.get('n_traces')} traces; "
                     f"rows: {mask.get('masked_rule')}).")
    elif mask:
        lines.append(f"- Mask effect on the primary sink: not estimable ({mask.get('reason', 'no rows')}).")
    return lines + [""]


def _per_layer(stats: dict) -> list[str]:
    lines = ["### Per-layer effects (Holm-adjusted p_adj < 0.05)", ""]
    records = stats.get("per_layer_effects")
    if not records:
        return lines + ["No per-layer effects (no effects rows).", ""]
    shown = ("is_sink", "sink_score")
    cells: dict[tuple[str, str], dict] = {}
    for r in records:
        if r.get("measure") not in shown:
            continue
        d = cells.setdefault((r["condition"], r["measure"]), {k: [] for k in
                                                             ("+", "-", "tested", "pre_edit", "exact_zero",
                                                              "degenerate", "p_adj")})
        if r.get("pre_edit"):
            d["pre_edit"].append(r["layer"])
        elif r.get("exact_zero"):
            d["exact_zero"].append(r["layer"])
        elif r.get("degenerate"):
            d["degenerate"].append(r["layer"])
        p_adj, effect = r.get("p_adj"), r.get("effect")
        if p_adj is None:
            continue
        d["tested"].append(r["layer"])
        d["p_adj"].append(p_adj)
        if effect is not None and p_adj < 0.05:
            d["+" if effect > 0 else "-"].append(r["layer"])
    rows = []
    for (cond, measure), d in sorted(cells.items()):
        found = "; ".join(f"{sign} {_compact_layers(d[sign])}" for sign in ("+", "-") if d[sign]) or "none"
        rows.append([cond, measure, found, _p(min(d["p_adj"])) if d["p_adj"] else "–",
                     _compact_layers(d["tested"]) or "none",
                     *(_compact_layers(d[k]) or "–" for k in ("pre_edit", "exact_zero", "degenerate"))])
    lines += md_table(["condition", "measure", "layers with p_adj < 0.05", "smallest p_adj", "layers tested",
                     "before the edit (not tested)", "exact zero", "degenerate"], rows)
    n_traces = [r.get("n_traces") for r in records if r.get("n_traces")]
    n_tests = sum(1 for r in records if r.get("measure") == "sink_score" and r.get("p_adj") is not None)
    if n_traces and n_tests:
        g = min(n_traces)
        floor = 2.0 / 2 ** g
        lines += [f"With {g} trace(s) the smallest two-sided sign-flip p is {_p(floor)}; Holm over {n_tests} "
                  f"tests per measure needs p < {_p(0.05 / n_tests)} for the most significant layer, so 'none' "
                  f"can mean too few traces rather than no effect (the verdicts above are single pre-declared "
                  f"tests and are not adjusted). Layers before the edited layer cannot change and are not tested; "
                  f"an exact zero (every token's change within the exact-null tolerance) and a degenerate estimate "
                  f"(every trace shows the same change) carry no CI and no p.", ""]
    return lines


def _figures(records: list[dict]) -> list[str]:
    lines = ["## Figures", ""]
    for rec in records:
        if rec["path"] is not None:
            lines += [f"![{_alt(rec['caption'])}](figures/{Path(rec['path']).name})", "",
                      f"*{rec['name']}: {rec['caption']}*", ""]
        else:
            lines += [f"- *{rec['name']}* not drawn: {rec['note']}.", ""]
    return lines


def _norm_range(block: dict) -> str:
    low, high = _num(math.exp(block["x_low"])), _num(math.exp(block["x_high"]))
    return low if low == high else f"{low}-{high}"


def _alt(text: str) -> str:
    return (text or "").replace("[", "(").replace("]", ")")


def _notes(stats: dict) -> list[str]:
    notes: list[str] = []
    for key in ("norm_score", "norm_lifetime", "compensation"):
        part = stats.get(key)
        if isinstance(part, dict):
            notes += [f"{key}: {n}" for n in part.get("notes") or []]
    for group, res in (stats.get("dose_response") or {}).items():
        notes += [f"dose_response[{group}]: {n}" for n in res.get("notes") or []]
    notes += [f"per_layer_effects: {n}" for n in stats.get("per_layer_notes") or []]
    for key, v in (stats.get("verdicts") or {}).items():
        notes += [f"{key}: {n}" for n in v.get("notes") or []]
    seen, unique = set(), []
    for n in notes:
        if n not in seen:
            seen.add(n)
            unique.append(n)
    if not unique:
        return []
    shown = unique[:30]
    lines = ["## Notes from the statistics", ""] + [f"- {md_cell(n)}" for n in shown]
    if len(unique) > len(shown):
        lines.append(f"- ... and {len(unique) - len(shown)} more in stats.json")
    return lines + [""]


# --------------------------------------------------------------------------------------------
# entry point
# --------------------------------------------------------------------------------------------


def render_report(run: Path, tables: dict, stats: dict) -> Path:
    """Write ``<run>/report.md`` (and ``<run>/figures/*.png``); return the report's path."""
    from interventions.store import write_text_atomic

    from .figures import render_figures

    run = Path(run)
    manifest = tables.get("manifest") or {}
    spec_name = stats.get("spec_name") or manifest.get("spec_name") or "run"
    run_id = stats.get("run_id") or manifest.get("run_id") or run.name
    figures = render_figures(tables, stats, run / "figures")
    description = (manifest.get("spec") or {}).get("description")
    conditions = [c.get("id") for c in manifest.get("conditions") or [] if c.get("id")]

    lines = [f"# {spec_name}: run {run_id}", ""]
    if description:
        lines += [f"> {description}", ""]
    if conditions:
        lines += [f"Conditions ({len(conditions)}): " + ", ".join(f"`{c}`" for c in conditions), ""]
    lines += _provenance(manifest, stats)
    lines += _verdicts(stats)
    lines += ["## Key statistics", ""]
    lines += _norm_score(stats.get("norm_score") or {})
    lines += _norm_lifetime(stats.get("norm_lifetime") or {})
    lines += _dose(stats.get("dose_response"))
    effects = tables.get("effects")
    has_mask = effects is not None and len(effects) > 0 and "kind" in effects.columns and \
        bool(effects["kind"].isin(kinds_with("MASKS_TARGET_KEYS")).any())
    lines += _compensation(stats.get("compensation") or {}, has_mask)
    lines += _per_layer(stats)
    lines += _figures(figures)
    lines += ["## How to read this", ""]
    lines += [" ".join(f"**{name}:** {text}" for name, text in HOW_TO_READ), ""]
    lines += _notes(stats)
    lines += ["All numbers are in `stats.json`; the rows behind them in `effects.parquet/`, `sink_layers.parquet`, "
              "`clean_profile.parquet` and `clean_sinks.jsonl`.", ""]
    path = run / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
