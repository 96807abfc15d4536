"""Figures of a run report: which figures exist, their captions, and drawing them all.

The drawing lives by job in :mod:`.figures_clean` (the clean run: norms, levels, scores),
:mod:`.figures_fits` (norm -> score, norm -> lifetime) and :mod:`.figures_edits` (swap, dose,
mask), on the shared style of :mod:`.figure_style`. Every ``draw_*`` takes the run's tables (see
:func:`interventions.stats.analysis.load_run`) and its ``stats.json`` dict and returns a matplotlib
Figure, or None when the run holds no data for it; figures draw only what ``stats/`` computed.
:func:`render_figures` saves them all and adds, for the report, a caption with the n behind each
figure or a note saying why a figure is absent.

- ``fig_norms``: hidden-state, key and value norms across layers (paper Fig. 1).
- ``fig_levels``: counts of secondary sink levels (l_start x lifetime) (paper Fig. 2).
- ``fig_scores``: primary vs secondary sink score across depth, valley and the first attention layers
  that read a secondary sink (l_start + 1) (Fig. 7 left).
- ``fig_norm_score``: log score ratio vs log l_start MLP-output norm, each layer's fitted line and the
  common slope (Fig. 7 mid).
- ``fig_norm_lifetime``: lifetime vs log norm with isotonic and segmented fits (Fig. 7 right).
- ``fig_swap``: suppression rate vs swap layer per site (Fig. 8).
- ``fig_dose``: lifetime and sink score vs scale factor, one line per token; controls dashed.
- ``fig_mask``: primary sink score clean vs masked per layer, and KL per condition.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import matplotlib.pyplot as plt

from interventions.spec.conditions import kinds_with

from .figure_style import NO_SECONDARY, effects_with, frame, n_traces, save, secondary_sinks, summary_rows
from .figures_clean import draw_levels, draw_norms, draw_scores
from .figures_edits import draw_dose, draw_mask, draw_swap
from .figures_fits import draw_norm_lifetime, draw_norm_score, norm_score_input
from .figures_layers import caption_layer_effects, draw_layer_effects
from .formatting import inference_text

DRAW: dict[str, Callable] = {
    "fig_norms": draw_norms,
    "fig_levels": draw_levels,
    "fig_scores": draw_scores,
    "fig_norm_score": draw_norm_score,
    "fig_norm_lifetime": draw_norm_lifetime,
    "fig_swap": draw_swap,
    "fig_dose": draw_dose,
    "fig_mask": draw_mask,
    "fig_layer_effects": draw_layer_effects,
}
"""Figure name -> ``draw(tables, stats) -> Figure | None``."""


def _saver(name: str, draw: Callable) -> Callable:
    def fig(tables: dict, stats: dict, out_dir: Path) -> Path | None:
        figure = draw(tables, stats)
        return None if figure is None else save(figure, out_dir, name)

    fig.__name__ = name
    fig.__doc__ = f"Draw ``{name}`` into ``out_dir/{name}.png``; None (nothing written) without data.\n\n" \
                  f"{draw.__doc__ or ''}"
    return fig


FIGURES: dict[str, Callable] = {name: _saver(name, draw) for name, draw in DRAW.items()}
"""Figure name -> ``fig(tables, stats, out_dir) -> Path | None`` (writes ``<name>.png``)."""

fig_norms, fig_levels, fig_scores = FIGURES["fig_norms"], FIGURES["fig_levels"], FIGURES["fig_scores"]
fig_norm_score, fig_norm_lifetime = FIGURES["fig_norm_score"], FIGURES["fig_norm_lifetime"]
fig_swap, fig_dose, fig_mask = FIGURES["fig_swap"], FIGURES["fig_dose"], FIGURES["fig_mask"]


def caption(name: str, tables: dict, stats: dict) -> str:
    """One sentence saying what figure ``name`` shows and the n behind it."""
    n_tr = n_traces(tables)
    sec = secondary_sinks(tables)
    n_sec = len(sec)
    bootstrap = "95% trace-bootstrap intervals from stats.json; no bar where the mean is an exact zero or degenerate"
    if name == "fig_norms":
        return (f"Hidden-state, key and value L2 norms per layer for the primary sink, the {n_sec} secondary sinks "
                f"(mean over sinks) and the median token, averaged over {n_tr} traces; log axis unless a norm is "
                f"exactly 0 (paper Fig. 1).")
    if name == "fig_levels":
        return (f"Number of secondary sinks at each level (l_start, lifetime) over {n_sec} sinks in "
                f"{sec['trace'].nunique() if n_sec else 0} traces (paper Fig. 2).")
    if name == "fig_scores":
        comp = stats.get("compensation") or {}
        return (f"Mean sink score per attention layer of the primary sink and of {n_sec} secondary sinks ({n_tr} "
                f"traces; bands: {bootstrap}), with the primary score's valley (layer {comp.get('valley_layer')}) "
                f"and the first attention layer that reads a secondary sink, l_start + 1 (paper Fig. 7 left).")
    if name == "fig_norm_score":
        ns = stats.get("norm_score") or {}
        window = f"attention layers l_start+1 .. l_start+{ns['window']} of every sink, dead or alive" \
            if ns.get("window") else "every recorded sink-layer row"
        return (f"Log ratio of secondary to primary sink score against the log MLP-output norm at l_start, the rows "
                f"the fit used ({window}; {ns.get('n_rows', 0)} rows, {ns.get('n_sinks', 0)} sinks, "
                f"{ns.get('n_traces', 0)} traces), with each layer's own fitted line (per-layer OLS) and the "
                f"common slope {inference_text(ns, estimate='slope')} (one intercept per layer) drawn once through "
                f"the mean of the rows (paper Fig. 7 mid).")
    if name == "fig_norm_lifetime":
        nl = stats.get("norm_lifetime") or {}
        return (f"Lifetime of each secondary sink against its log MLP-output norm at l_start ({nl.get('n_sinks', 0)} "
                f"sinks, {nl.get('n_censored', 0)} censored), with the isotonic step fit and the best segmented "
                f"fit by BIC (paper Fig. 7 right).")
    if name == "fig_swap":
        rates = summary_rows(stats, "swap_rates")
        n = int(rates["n_units"].max()) if len(rates) else 0
        return (f"Share of future secondary sinks suppressed when one layer's activation is swapped for the mean "
                f"non-sink token, per site and swap layer ({n} sinks per layer, "
                f"{int(rates['n_traces'].max()) if len(rates) else 0} traces; {bootstrap}) (paper Fig. 8).")
    if name == "fig_dose":
        levels = summary_rows(stats, "dose_levels")
        n_series = levels.loc[~levels["is_control"].astype(bool), "series"].nunique() if len(levels) else 0
        return (f"Lifetime and sink score (one layer after the edited layer) against the MLP-output scale factor "
                f"(x1 = clean run of the same tokens): one line per token of each target set ({n_series} lines), "
                f"matched control positions dashed; {bootstrap}.")
    if name == "fig_mask":
        e = effects_with(tables, "MASKS_TARGET_KEYS")
        n_t = int(len(e.loc[~e["is_control"], ["trace", "position"]].drop_duplicates())) if len(e) else 0
        return (f"Left: primary sink score per layer in the clean run and with attention to the targets masked "
                f"(mean over traces); right: mean next-token KL from the clean run for targets and controls per "
                f"condition ({bootstrap}), {n_t} targets in {e['trace'].nunique() if len(e) else 0} traces.")
    if name == "fig_layer_effects":
        return caption_layer_effects(stats)
    return name


def _kind_names(fact: str) -> str:
    """The kinds that declare ``fact``, for a sentence: ``mean_swap``, ``zero or scale``."""
    return " or ".join(kinds_with(fact)) or f"kind declaring {fact}"


def absent_reason(name: str, tables: dict, stats: dict) -> str:
    """Why figure ``name`` was not drawn."""
    has_sec = len(secondary_sinks(tables)) > 0
    if name in ("fig_norms", "fig_scores"):
        return "the run folder has no clean_profile table"
    if name in ("fig_levels", "fig_norm_lifetime"):
        return NO_SECONDARY if not has_sec else "no secondary sink with a positive MLP-output norm"
    if name == "fig_norm_score":
        if not len(norm_score_input(tables)) and not len(frame(tables, "sink_layers")):
            return NO_SECONDARY
        return "every sink-layer row has a zero sink score or norm (log undefined)"
    if name == "fig_swap":
        if effects_with(tables, "SWEEPS_LAYERS").empty:
            return f"the run has no {_kind_names('SWEEPS_LAYERS')} condition"
        if "summaries" not in stats:
            return "stats.json has no summaries (run `intervene stats RUN_DIR` to compute them)"
        return "no swapped target was a sink in the clean run (suppression needs a clean secondary sink)"
    if name == "fig_dose":
        if effects_with(tables, "DOSE").empty:
            return f"the run has no {_kind_names('DOSE')} condition"
        return "stats.json has no summaries (run `intervene stats RUN_DIR` to compute them)"
    if name == "fig_mask":
        return f"the run has no {_kind_names('MASKS_TARGET_KEYS')} condition"
    if name == "fig_layer_effects":
        return "stats.json has no per-layer effects (no effects rows)"
    return "no data"


def render_figures(tables: dict, stats: dict, out_dir: Path) -> list[dict]:
    """Draw every figure into ``out_dir``.

    Returns one record per figure: ``{name, path (or None), caption, note}``; ``note`` says why
    a figure is absent or that drawing it failed (a figure never stops the report).
    """
    out = []
    for name, fn in FIGURES.items():
        rec = {"name": name, "path": None, "caption": None, "note": None}
        try:
            rec["path"] = fn(tables, stats, Path(out_dir))
            if rec["path"] is not None:
                rec["caption"] = caption(name, tables, stats)
            else:
                rec["note"] = absent_reason(name, tables, stats)
                (Path(out_dir) / f"{name}.png").unlink(missing_ok=True)  # stale from an earlier analysis
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the report
            plt.close("all")
            rec["path"] = None
            rec["note"] = f"drawing failed: {type(exc).__name__}: {exc}"
        out.append(rec)
    return out
