"""Figures of an ``intervene detect`` folder: secondary sink levels, the tokens that become sinks,
and the norms of the primary sink, the secondary sinks and the median token across layers.

The levels and norms figures are the run report's (:func:`.figures_clean.draw_levels`,
:func:`.figures_clean.draw_norms`), fed from the detect folder's own tables: ``sinks.jsonl`` for
the levels, ``profiles.parquet/`` (one part per trace) for the norms, read one part at a time so a
long real-model detection never holds every (layer, position) row at once.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .figure_style import COLORS, save, styled
from .figures_clean import NORM_PANELS, draw_levels, draw_norms

NORM_COLUMNS = ["layer", "position"] + [f"{what}_norm" for what, _ in NORM_PANELS]
TOP_TOKENS = 20


def norm_profile(folder: Path, sinks: pd.DataFrame, traces: pd.DataFrame) -> pd.DataFrame:
    """Per trace and layer, the ``clean_profile`` columns :func:`draw_norms` reads: the reference
    primary sink's hidden/key/value norms, the median token's, and the mean over the trace's
    secondary sinks (NaN without any), from ``profiles.parquet/``. Empty when the folder has none."""
    parts = sorted((Path(folder) / "profiles.parquet").glob("*.parquet"))
    reference = {}
    if len(traces) and "reference" in traces.columns:
        reference = {int(t): int(r) for t, r in zip(traces["trace"], traces["reference"]) if pd.notna(r)}
    frames = []
    for part in parts:
        prof = pd.read_parquet(part, columns=["trace"] + NORM_COLUMNS)
        if prof.empty:
            continue
        trace = int(prof["trace"].iloc[0])
        of_trace = sinks[sinks["trace"] == trace] if len(sinks) else sinks
        primary = of_trace[of_trace["kind"] == "primary"]["position"] if len(of_trace) else pd.Series(dtype=int)
        ref = reference.get(trace, int(primary.min()) if len(primary) else 0)
        secondary = set(of_trace[of_trace["kind"] == "secondary"]["position"]) if len(of_trace) else set()
        by_layer = prof.groupby("layer")
        out = pd.DataFrame({"trace": trace, "layer": sorted(prof["layer"].unique())})
        at_ref = prof[prof["position"] == ref].set_index("layer")
        sec = prof[prof["position"].isin(secondary)].groupby("layer")
        for what, _ in NORM_PANELS:
            col = f"{what}_norm"
            out[f"primary_{col}"] = at_ref[col].reindex(out["layer"]).to_numpy(float)
            out[f"median_{col}"] = by_layer[col].median().reindex(out["layer"]).to_numpy(float)
            out[f"secondary_{col}"] = sec[col].mean().reindex(out["layer"]).to_numpy(float) if secondary \
                else np.nan
        out["n_secondary"] = len(secondary)
        frames.append(out)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


@styled
def draw_tokens(tokens: pd.DataFrame):
    """Horizontal bars: how many secondary sinks each token is (the most frequent ``TOP_TOKENS``)."""
    if tokens.empty:
        return None
    top = tokens.sort_values("count", ascending=False).head(TOP_TOKENS).iloc[::-1]
    fig, ax = plt.subplots(figsize=(5.6, max(1.8, 0.3 * len(top) + 1.2)))
    y = np.arange(len(top))
    ax.barh(y, top["count"], color=COLORS["secondary"])
    ax.set_yticks(y)
    ax.set_yticklabels([repr(t) for t in top["token"]], fontfamily="monospace")
    for yi, (count, share) in enumerate(zip(top["count"], top["share"])):
        ax.text(count, yi, f" {int(count)} ({share:.1%})", va="center", fontsize=8)
    ax.set_xlim(0, top["count"].max() * 1.3)
    ax.set_xlabel("secondary sinks (count)")
    total = int(tokens["count"].sum())
    shown = f"; the {len(top)} most frequent of {len(tokens)} tokens" if len(tokens) > len(top) else ""
    ax.set_title(f"Tokens that become secondary sinks ({total} sinks{shown})")
    ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


DETECT_FIGURES = ("fig_levels", "fig_tokens", "fig_norms")


def render_detection_figures(folder: Path, result) -> list[dict]:
    """Draw the detect folder's figures into ``folder/figures``: ``{name, path (or None), caption, note}``
    per figure, a note saying why one is absent (a figure never stops the report)."""
    folder = Path(folder)
    out_dir = folder / "figures"
    sinks = result.sinks
    secondary = sinks[sinks["kind"] == "secondary"] if len(sinks) else sinks
    n_traces = len(result.traces)
    records = []
    for name in DETECT_FIGURES:
        rec = {"name": name, "path": None, "caption": None, "note": None}
        try:
            if name == "fig_levels":
                fig = draw_levels({"clean_sinks": sinks}, {}) if len(secondary) else None
                rec["caption"] = (f"Number of secondary sinks at each level (l_start, lifetime) over {len(secondary)} "
                                  f"sinks in {secondary['trace'].nunique() if len(secondary) else 0} traces "
                                  "(paper Fig. 2).")
                rec["note"] = "no secondary sink was found"
            elif name == "fig_tokens":
                fig = draw_tokens(result.tokens)
                rec["caption"] = (f"Tokens of the {len(secondary)} secondary sinks, count and share "
                                  f"(at most {TOP_TOKENS} shown; paper Table 1).")
                rec["note"] = "no secondary sink was found"
            else:
                profile = norm_profile(folder, sinks, result.traces)
                fig = draw_norms({"clean_profile": profile}, {}) if len(profile) else None
                rec["caption"] = (f"Hidden-state, key and value L2 norms per layer for the reference primary sink, the "
                                  f"{len(secondary)} secondary sinks (mean over sinks) and the median token, averaged "
                                  f"over {profile['trace'].nunique() if len(profile) else 0} of {n_traces} traces; "
                                  "log axis unless a norm is exactly 0 (paper Fig. 1).")
                rec["note"] = "the folder has no profiles.parquet/"
            if fig is None:
                rec["caption"] = None
                (out_dir / f"{name}.png").unlink(missing_ok=True)  # stale from an earlier report
            else:
                rec["path"], rec["note"] = save(fig, out_dir, name), None
        except Exception as exc:  # noqa: BLE001 - one broken figure must not lose the report
            plt.close("all")
            rec.update(path=None, caption=None, note=f"drawing failed: {type(exc).__name__}: {exc}")
        records.append(rec)
    return records
