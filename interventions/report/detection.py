"""``report.md`` of an ``intervene detect`` folder: what was found, with the settings that found it.

A detect folder has no conditions and no statistics, so it gets its own short report (counts,
levels, tokens, provenance, and the figures of :mod:`.detection_figures` in ``figures/``) rather
than a run report full of empty sections.
"""

from __future__ import annotations

from pathlib import Path

from .formatting import fmt_num, md_table


def render_detection_report(folder: Path) -> Path:
    """Write ``<folder>/report.md`` for a detect folder; return its path."""
    from interventions.detection.job import load_detection
    from interventions.store import Manifest, write_text_atomic

    from .detection_figures import render_detection_figures

    folder = Path(folder)
    result = load_detection(folder)
    manifest = Manifest.load(folder / "manifest.json")
    sinks = result.sinks
    primary = sinks[sinks.kind == "primary"] if len(sinks) else sinks
    secondary = sinks[sinks.kind == "secondary"] if len(sinks) else sinks
    settings = manifest.get("settings") or {}
    model = settings.get("model") or {}
    lines = [f"# Sink detection: {folder.name}", "",
             f"{len(result.traces)} traces: **{len(primary)} primary sinks, {len(secondary)} secondary sinks** "
             f"({manifest.get('status', '?')}; {len(manifest.get('traces_completed') or [])} of "
             f"{manifest.get('traces_total', '?')} traces completed).", "",
             "## Provenance", ""]
    rows = [["model", model.get("source", "?")],
            ["dtype / device", f"{model.get('dtype', '?')} / {model.get('device', '?')}"],
            ["detection", ", ".join(f"{k} {v}" for k, v in (settings.get("detection") or {}).items()) or "?"],
            ["command", f"`{manifest.get('command', '?')}`"],
            ["created", manifest.get("created_utc", "?")]]
    lines += md_table(["", ""], rows)
    lines += ["## Secondary sink levels (l_start, lifetime)", ""]
    lines += md_table(["l_start", "lifetime", "count"], [[r.l_start, r.lifetime, r.count]
                                                        for r in result.levels.itertuples()]) \
        if len(result.levels) else ["No secondary sink was found.", ""]
    if len(result.tokens):
        lines += ["## Secondary sink tokens", ""]
        lines += md_table(["token", "id", "count", "share"],
                        [[f"`{r.token!r}`", r.token_id, r.count, fmt_num(r.share)]
                         for r in result.tokens.head(20).itertuples()])
    lines += ["## Figures", ""]
    for rec in render_detection_figures(folder, result):
        if rec["path"] is not None:
            rel = Path(rec["path"]).relative_to(folder).as_posix()
            lines += [f"![{rec['caption']}]({rel})", "", f"*{rec['name']}: {rec['caption']}*", ""]
        else:
            lines += [f"*{rec['name']}* not drawn: {rec['note']}.", ""]
    lines += ["Tables: `sinks.jsonl`, `levels.csv`, `tokens.csv`, `traces.csv`, `profiles.parquet/`, `sink_scores/`.",
              ""]
    path = folder / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path
