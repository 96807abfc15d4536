"""The tables a run writes: effects columns (generic + every kind's), per-sink and per-layer rows, the summary.

Pure functions (observations and rows in, frames out); :mod:`interventions.run.job` writes them.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from interventions.spec.measures import MEASURES
from interventions.store import read_parts  # noqa: F401 - re-exported (interventions.run.job.read_parts)

if TYPE_CHECKING:
    from interventions.detection.rules import Sink

BASE_COLUMNS = {
    "condition": "condition id, e.g. scale.mlp_output.l_start.x5",
    "kind": "the intervention kind (a registered kind: zero, scale, mean_swap, attention_mask, ...)",
    "site": "mlp_output | attention_output | block_output (empty for a kind that edits attention)",
    "intervened_layer": "first layer edited for this target",
    "intervened_layers": "every layer edited for this target, e.g. '4' or '5,6,7'",
    "target_set": "name of the spec's target set",
    "is_control": "True for matched-control positions",
    "trace": "0-based trace index",
    "position": "token position of the target",
    "token": "decoded token",
    "token_id": "token id",
    "clean_kind": "primary | secondary | none in the clean run",
    "prefix_hash": "hash of the token ids up to and including the target: the same hash in two traces is the same "
                   "measurement (a causal LM sees the same prefix), counted once as an independent unit",
    "layer": "layer at which the per-layer measures are taken",
    "non_finite": "the intervened forward produced NaN/inf where the clean one is finite (see manifest non_finite)",
}
"""Columns every effects row has, whatever its kind and measures."""

def kind_columns() -> dict[str, object]:
    """Every registered kind's effect columns: name -> :class:`~interventions.spec.EffectColumn`."""
    from interventions.spec.conditions import KINDS

    out: dict[str, object] = {}
    for cls in KINDS.values():
        out.update(cls.EFFECT_COLUMNS)
    return out


class _EffectColumns(Mapping):
    """Column -> meaning for ``effects.parquet``: generic columns, every measure's, every registered kind's.

    Read live from the measure and kind registries, so one registered later documents its columns here too.
    """

    def _all(self) -> dict[str, str]:
        out = dict(BASE_COLUMNS)
        ref = out.pop("non_finite")
        for measure in MEASURES.values():
            out.update(measure.columns)
        out.update({name: col.description for name, col in kind_columns().items()})
        out["non_finite"] = ref
        return out

    def __getitem__(self, key: str) -> str:
        return self._all()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())

    def __repr__(self) -> str:
        return f"EFFECT_COLUMNS({', '.join(self._all())})"


EFFECT_COLUMNS = _EffectColumns()
"""Each measure also has a ``clean_`` twin (the same measure in the clean run)."""


def measured_columns(measures) -> set[str]:
    """Per-target/per-layer columns (with their ``clean_`` twins) the selected ``measures`` write."""
    cols: set[str] = set()
    for m in measures:
        for c in MEASURES[m].columns:
            cols |= {c, "clean_" + c}
    return cols


def sink_layer_rows(obs, sinks, n_layers: int) -> pd.DataFrame:
    """One row per clean secondary sink x attention layer that sees it: the norm -> score fit's input.

    A sink-aligned hidden state at layer l (the output of layer l) becomes a key in the attention
    of layer l + 1, so a sink living on layers [l_start, l_start + lifetime) is attended to as a
    sink in layers l_start + 1 .. l_start + lifetime; ``layer`` is that attention layer.
    """
    scores = obs.mean_sink_scores()
    ref = obs.reference_position or 0  # the reference primary sink (position 0 when the trace has none)
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        for layer in (l + 1 for l in s.layers if l + 1 < n_layers):
            rows.append({"trace": s.trace, "position": s.position, "token": s.token, "token_id": s.token_id,
                         "l_start": s.l_start, "lifetime": s.lifetime, "censored": s.censored, "layer": layer,
                         "mlp_out_norm": s.mlp_out_norm, "sink_score": float(scores[layer, s.position]),
                         "primary_sink_score": float(scores[layer, ref])})
    return pd.DataFrame(rows, columns=["trace", "position", "token", "token_id", "l_start", "lifetime", "censored",
                                       "layer", "mlp_out_norm", "sink_score", "primary_sink_score"])


SINK_WINDOW_COLUMNS = ["trace", "position", "token", "l_start", "lifetime", "censored", "layer", "alive",
                       "mlp_out_norm", "sink_score", "primary_sink_score"]


def sink_window_rows(obs, sinks: list[Sink], n_layers: int) -> pd.DataFrame:
    """One row per clean secondary sink x attention layer after its l_start (l_start + 1 .. L - 1), alive or not.

    The input of the norm -> score fit's fixed window (:func:`interventions.stats.fit_norm_score`):
    every sink contributes the same layers whatever its lifetime, so late layers are not left to
    long-lived sinks only. ``layer`` is the attention layer (as in :func:`sink_layer_rows`);
    ``alive`` says whether the key it reads (the output of ``layer - 1``) is still sink-aligned.
    """
    scores = obs.mean_sink_scores()
    ref = obs.reference_position or 0
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        lived = set(s.layers)
        for layer in range(s.l_start + 1, n_layers):
            rows.append({"trace": s.trace, "position": s.position, "token": s.token, "l_start": s.l_start,
                         "lifetime": s.lifetime, "censored": s.censored, "layer": layer, "alive": (layer - 1) in lived,
                         "mlp_out_norm": s.mlp_out_norm, "sink_score": float(scores[layer, s.position]),
                         "primary_sink_score": float(scores[layer, ref])})
    return pd.DataFrame(rows, columns=SINK_WINDOW_COLUMNS)


def clean_profile_rows(obs, trace: int, sinks: list[Sink] = ()) -> pd.DataFrame:
    """Per layer of one clean trace: the reference primary sink's score and norms, the median token's
    norms, and the mean norms over the trace's clean secondary sinks (NaN when it has none; paper Fig. 1)."""
    scores = obs.mean_sink_scores()
    norm = obs.profiles["hidden_norm"]
    ref = obs.reference_position or 0  # the reference primary sink (position 0 when the trace has none)
    secondary = [s.position for s in sinks if s.kind == "secondary"]
    out = pd.DataFrame({"trace": trace, "layer": np.arange(scores.shape[0]), "primary_sink_score": scores[:, ref],
                        "primary_hidden_norm": norm[:, ref], "median_hidden_norm": np.median(norm, axis=1),
                        "primary_key_norm": obs.profiles["key_norm"][:, ref],
                        "median_key_norm": np.median(obs.profiles["key_norm"], axis=1),
                        "primary_value_norm": obs.profiles["value_norm"][:, ref],
                        "median_value_norm": np.median(obs.profiles["value_norm"], axis=1),
                        "n_secondary": len(secondary)})
    for what in ("hidden", "key", "value"):
        values = np.asarray(obs.profiles[f"{what}_norm"] if what != "hidden" else norm, dtype=float)
        out[f"secondary_{what}_norm"] = values[:, secondary].mean(axis=1) if secondary else np.nan
    return out


def summarize(effects: pd.DataFrame) -> pd.DataFrame:
    """Per condition, target set and group (targets / controls): the numbers the terminal table shows.

    One row per target set, not per condition: a condition that edits several target sets (``weak``
    tokens that become sinks and ``others`` that never do) would otherwise show the mean of the two
    and hide both dose-responses. Columns of measures the run did not take are NaN.
    """
    if effects.empty:
        return pd.DataFrame()
    if "target_set" not in effects:
        effects = effects.assign(target_set="")
    per_target = effects.drop_duplicates(["condition", "target_set", "is_control", "trace", "position"])
    nan = float("nan")
    per_target = per_target.assign(**{c: nan for c in ("factor", "lifetime", "clean_lifetime", "ref_sink_score",
                                                       "kl", "delta_nll") if c not in per_target})
    if "non_finite" not in per_target:
        per_target = per_target.assign(non_finite=False)
    # An overflowing condition keeps its rows (marked non_finite); its inf values do not enter the means.
    means = ["ref_sink_score", "kl", "delta_nll"]
    per_target = per_target.assign(**{c: per_target[c].replace([np.inf, -np.inf], np.nan) for c in means})
    grouped = per_target.groupby(["condition", "target_set", "is_control"], sort=False)
    table = pd.DataFrame({
        "kind": grouped.kind.first(),
        "factor": grouped.factor.first(),
        "targets": grouped.size(),
        "sinks_clean": grouped.apply(lambda g: (g.clean_lifetime > 0).mean() if g.clean_lifetime.notna().any()
                                     else nan, include_groups=False),
        "sinks_after": grouped.apply(lambda g: (g.lifetime > 0).mean() if g.lifetime.notna().any() else nan,
                                     include_groups=False),
        "mean_lifetime": grouped.lifetime.mean(),
        "mean_clean_lifetime": grouped.clean_lifetime.mean(),
        "mean_sink_score": grouped.ref_sink_score.mean(),
        "mean_kl": grouped.kl.mean(),
        "mean_delta_nll": grouped.delta_nll.mean(),
        "non_finite": grouped.non_finite.sum().astype(int),
    }).reset_index()
    return table
