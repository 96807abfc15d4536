"""Compare per-layer effect sizes across runs, conditions and models.

Two or more run folders (``intervene run``) go in; for one per-layer measure (say ``is_sink``)
each run's effect (mean over target tokens of intervened minus clean, as in ``stats.json``) is
put on a common layer axis and every run is compared with a reference run, layer by layer:

- ``align="layer"``: absolute layer (runs of the same depth);
- ``align="depth"``: relative depth ``layer / (L - 1)``, binned (``bins`` equal bins on [0, 1]);
- ``align="l_start"``: layers since each run's own ``l_start`` (its modal secondary-sink start
  layer, from the clean pass), the natural axis for sink formation across models;
- ``align="condition"``: one model, condition against condition at the same layer.

Per aligned layer the table holds each run's effect with its CI, the difference with a CI and a
p-value adjusted across every compared layer (and condition and pair) of the table.

Inference unit: the trace (tokens of one trace share a context and a forward pass). The effect
of a run at an aligned layer is ``sum of per-target changes / number of targets`` over traces;
its CI resamples whole traces. The difference's CI resamples traces *within each run*, the runs
independently, unless the two runs share traces and model (the same trace texts through the
same weights, e.g. two seeds or two conditions of one model): then one resample of traces is
applied to both runs (paired), which removes the between-trace variation they share.

The resampling is :mod:`interventions.stats`' own: multinomial trace weights
(``bootstrap_weights``) from a seeded ``numpy`` generator, at least ``N_BOOT_MIN`` draws, the
ratio estimator on every replicate (``ratio_of_sums``) and BCa intervals (``interval``; with
one jackknife sample per independently resampled run, the multi-sample acceleration of Efron &
Tibshirani 1993, ch. 14), percentile when BCa is not defined (fewer than
``MIN_CLUSTERS_BCA`` traces in a run, or the observed value outside the replicates). What is
specific here is the two-sample design: a paired comparison applies one set of weights to both
runs; an independent one draws each run's traces separately. P-values are exact or Monte-Carlo
permutation tests from ``scipy.stats.permutation_test`` (paired: swap the two runs' values
within each trace; independent: reassign whole traces between runs), adjusted with the stats
layer's ``adjust`` (``statsmodels``' ``multipletests``; ``bh`` is Benjamini-Hochberg, and
statsmodels' spelling ``fdr_bh`` is accepted as the same).

Exact zeros: where two paired runs have identical target rows, the difference is reported as
exactly 0 with no CI or p (it is not an estimate with noise); a run whose changes at a layer are
all exactly 0 (a layer before the edit) has effect 0 with no CI.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import special, stats

from interventions.errors import UserError
from interventions.stats._common import CORRECTION_ALIASES, CORRECTIONS, adjust, canonical_correction
from interventions.stats._resampling import (bootstrap_weights, interval, jackknife_weights,
                                             ratio_of_sums)
from interventions.spec.measures import layer_columns, measure_of

ALIGNMENTS = ("layer", "depth", "l_start", "condition")
AXIS_NAME = {"layer": "layer", "depth": "relative depth", "l_start": "layers since l_start", "condition": "layer"}
GROUPS = ("targets", "controls")
N_BOOT_MIN = 2000
N_PERM = 9999
LEVEL = 0.95

COLUMNS = ["measure", "group", "align", "x", "condition", "run", "ref_condition", "ref_run", "layers", "ref_layers",
           "n_traces", "n_targets", "effect", "ci_low", "ci_high", "ref_n_traces", "ref_n_targets", "ref_effect",
           "ref_ci_low", "ref_ci_high", "diff", "diff_ci_low", "diff_ci_high", "ci_method", "paired", "p",
           "p_method", "p_adj", "correction", "note"]
"""One row per compared aligned layer x condition x (run vs reference run)."""
EFFECT_COLUMNS = ["measure", "group", "align", "series", "run", "condition", "x", "layers", "n_traces", "n_targets",
                  "effect", "ci_low", "ci_high", "ci_method"]
"""One row per run (or condition) x aligned layer: the lines of the effect figure."""


# --------------------------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------------------------


@dataclass
class Run:
    """One run folder as this module needs it."""

    label: str
    path: Path
    effects: pd.DataFrame
    manifest: dict
    n_layers: int
    l_start: int | None

    @property
    def model_id(self) -> tuple:
        m = self.manifest.get("model", {})
        return (m.get("source"), m.get("folder_sha256"), m.get("revision"), m.get("gguf_file"))

    @property
    def traces_id(self) -> tuple:
        """What fixes the token sequences: the trace source and its reading options (and the seed of testbed traces)."""
        s = self.manifest.get("spec", {})
        testbed = s.get("traces") == "testbed"
        return (s.get("traces"), s.get("limit"), s.get("max_tokens"), s.get("chat_template"),
                s.get("seed") if testbed else None)

    @property
    def conditions(self) -> list[str]:
        return list(dict.fromkeys(self.effects["condition"])) if len(self.effects) else []


def load_runs(runs, labels: list[str] | None = None) -> list[Run]:
    """Read run folders (paths, ``results/<name>`` folders, :class:`~interventions.run.job.RunResult` or :class:`Run`)."""
    from interventions.stats.analysis import resolve_run_dir
    from interventions.store import read_parts

    loaded = []
    for given in runs:
        if isinstance(given, Run):
            loaded.append(given)
            continue
        path = resolve_run_dir(getattr(given, "out", given))
        manifest_file = path / "manifest.json"
        if not manifest_file.exists():
            raise UserError(f"{path} is not a run folder (no manifest.json); give folders written by `intervene run`",
                            field="runs")
        manifest = json.loads(manifest_file.read_text())
        effects = read_parts(path / "effects.parquet") if (path / "effects.parquet").is_dir() else pd.DataFrame()
        facts = manifest.get("run_facts") or {}
        loaded.append(Run(label="", path=path, effects=effects, manifest=manifest,
                          n_layers=int(manifest.get("model", {}).get("n_layers") or
                                       (effects["layer"].max() + 1 if "layer" in effects else 0)),
                          l_start=facts.get("modal_l_start")))
    names = _labels(loaded, labels)
    for run, name in zip(loaded, names):
        run.label = name
    return loaded


def _labels(runs: list[Run], labels: list[str] | None) -> list[str]:
    if labels is not None:
        if len(labels) != len(runs) or len(set(labels)) != len(labels):
            raise UserError(f"give {len(runs)} distinct labels, one per run (got {labels})", field="labels")
        return list(labels)
    names = [r.label or r.manifest.get("spec_name") or r.path.name for r in runs]
    if len(set(names)) < len(names):
        names = [f"{n} ({r.manifest.get('model', {}).get('source', '?')})" for n, r in zip(names, runs)]
    if len(set(names)) < len(names):
        names = [f"{n} {r.path.name}" for n, r in zip(names, runs)]
    if len(set(names)) < len(names):
        names = [f"{n} #{i}" for i, n in enumerate(names)]
    return names


def shares_traces_and_model(a: Run, b: Run) -> bool:
    """Same weights and the same token sequences, so trace i of one run is trace i of the other."""
    return a is b or (a.model_id == b.model_id and a.traces_id == b.traces_id)


# --------------------------------------------------------------------------------------------
# checks (one line each, before any resampling)
# --------------------------------------------------------------------------------------------


def _check(runs: list[Run], measure: str, align: str, group: str, correction: str, n_boot: int) -> None:
    if align not in ALIGNMENTS:
        raise UserError(f"unknown alignment {align!r}; use one of {', '.join(ALIGNMENTS)}", field="align")
    if group not in GROUPS:
        raise UserError(f"unknown group {group!r}; use targets or controls", field="group")
    if CORRECTION_ALIASES.get(correction, correction) not in CORRECTIONS:
        raise UserError(f"unknown correction {correction!r}; use one of {', '.join(CORRECTIONS)} ("
                        + ", ".join(f"{a} is {c}" for a, c in CORRECTION_ALIASES.items()) + ")", field="correction")
    if n_boot < N_BOOT_MIN:
        raise UserError(f"n_boot {n_boot} is too few for a 95% interval of a difference; use at least {N_BOOT_MIN}",
                        field="n_boot")
    per_layer = layer_columns()  # every registered measure's per-layer columns (each has a clean_ twin)
    if measure not in per_layer:
        raise UserError(f"{measure!r} is not a per-layer measure; compare one of {', '.join(per_layer)} "
                        "(per-target measures such as kl are in each run's summary.csv)", field="measure")
    if len(runs) < (1 if align == "condition" else 2):
        raise UserError("give at least two runs (or one run with --align condition)", field="runs")
    for r in runs:
        if r.effects.empty or "layer" not in r.effects.columns:
            raise UserError(f"run {r.label} ({r.path}) has no per-layer effects (effects.parquet is empty or "
                            "missing); it cannot be compared", field="runs")
        declared = r.manifest.get("spec", {}).get("measures")
        if declared is not None and measure_of(measure) not in declared:
            raise UserError(f"run {r.label} did not measure {measure} (its spec's measures: {', '.join(declared)}); "
                            "compare runs that measured the same thing", field="measure")
        if measure not in r.effects.columns or f"clean_{measure}" not in r.effects.columns:
            raise UserError(f"run {r.label} has no {measure} column; compare runs that measured the same thing",
                            field="measure")
    if align == "condition":
        models = {r.model_id for r in runs}
        if len(models) > 1:
            raise UserError("--align condition compares conditions of one model, but the runs use different models ("
                            + "; ".join(f"{r.label}: {r.model_id[0]}" for r in runs) + "); use layer, depth or "
                            "l_start", field="align")
    if align == "l_start":
        missing = [r.label for r in runs if r.l_start is None]
        if missing:
            raise UserError(f"run(s) {', '.join(missing)} found no secondary sink, so have no l_start to align on; "
                            "give l_starts={run: layer} (--l-start RUN=LAYER) or use --align depth", field="align")


# --------------------------------------------------------------------------------------------
# aligned units: one value per target token and aligned layer
# --------------------------------------------------------------------------------------------


def axis_of(run: Run, align: str, *, bins: int) -> dict[int, float]:
    """Aligned coordinate of every layer of ``run``."""
    layers = range(run.n_layers)
    if align in ("layer", "condition"):
        return {l: l for l in layers}
    if align == "l_start":
        return {l: l - run.l_start for l in layers}
    last = max(run.n_layers - 1, 1)
    return {l: round((min(int(np.floor(l / last * bins)), bins - 1) + 0.5) / bins, 6) for l in layers}


def _units(run: Run, condition: str, measure: str, group: str, axis: dict[int, float]) -> pd.DataFrame:
    """Per (x, trace, position): the mean intervened-minus-clean change over the layers mapped to x."""
    e = run.effects
    rows = e[(e["condition"] == condition) & (e["is_control"].astype(bool) == (group == "controls"))]
    if "non_finite" in rows.columns:
        rows = rows[~rows["non_finite"].astype(bool)]
    d = pd.DataFrame({"trace": rows["trace"].to_numpy(), "position": rows["position"].to_numpy(),
                      "layer": rows["layer"].to_numpy(),
                      "diff": rows[measure].astype(float).to_numpy() - rows[f"clean_{measure}"].astype(float).to_numpy()})
    d = d[np.isfinite(d["diff"])]
    d = d.groupby(["trace", "position", "layer"], sort=True)["diff"].mean().reset_index()  # duplicates averaged
    d["x"] = d["layer"].map(axis)
    return d


@dataclass
class _Series:
    run: Run
    condition: str
    label: str
    units: pd.DataFrame  # x, trace, position, layer, diff

    def at(self, x) -> tuple[pd.DataFrame, str]:
        """Per (trace, position) value at x and the layers behind it."""
        u = self.units[self.units["x"] == x]
        layers = ",".join(str(l) for l in sorted(u["layer"].unique()))
        return u.groupby(["trace", "position"], sort=True)["diff"].mean().reset_index(), layers


def _trace_sums(units: pd.DataFrame, traces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-trace sum of changes and number of targets, in the order of ``traces`` (0 where absent)."""
    s = units.groupby("trace")["diff"].agg(["sum", "count"]).reindex(traces, fill_value=0)
    return s["sum"].to_numpy(float), s["count"].to_numpy(float)


# --------------------------------------------------------------------------------------------
# the trace-cluster bootstrap and the permutation tests
# --------------------------------------------------------------------------------------------


def _effect_ci(S: np.ndarray, N: np.ndarray, *, n_boot: int, rng: np.random.Generator, level: float) -> dict:
    """One run's effect at one aligned layer with its trace-bootstrap CI (no CI on an exact zero or one trace)."""
    keep = N > 0
    S, N = S[keep], N[keep]
    estimate = float(S.sum() / N.sum())
    out = {"n_traces": int(S.size), "n_targets": int(N.sum()), "effect": estimate, "ci_low": np.nan,
           "ci_high": np.nan}
    if S.size < 2:
        return {**out, "ci_method": "none (one trace)"}
    boot = ratio_of_sums(bootstrap_weights(S.size, n_boot, rng), S, N)
    if np.ptp(boot) == 0:
        return {**out, "ci_method": "exact zero" if estimate == 0 else "none (no variation)"}
    low, high, method = interval(boot, estimate, ratio_of_sums(jackknife_weights(S.size), S, N), level=level)
    return {**out, "ci_low": low, "ci_high": high, "ci_method": method}


def _difference(a: tuple, b: tuple, *, paired: bool, n_boot: int, rng: np.random.Generator, level: float,
                n_perm: int) -> dict:
    """effect(a) - effect(b) with a trace-cluster bootstrap CI and a permutation p-value.

    ``a`` and ``b`` are (S, N) per-trace arrays; when ``paired`` both are over the same traces in
    the same order and one set of weights resamples both.
    """
    (Sa, Na), (Sb, Nb) = a, b
    estimate = float(Sa.sum() / Na.sum() - Sb.sum() / Nb.sum())
    if paired:  # one draw of traces for both runs
        W, J = bootstrap_weights(Sa.size, n_boot, rng), jackknife_weights(Sa.size)
        boot = ratio_of_sums(W, Sa, Na) - ratio_of_sums(W, Sb, Nb)
        jack = ratio_of_sums(J, Sa, Na) - ratio_of_sums(J, Sb, Nb)
    else:  # each run's traces drawn on their own: one jackknife sample per run
        ka, kb = Na > 0, Nb > 0
        Sa, Na, Sb, Nb = Sa[ka], Na[ka], Sb[kb], Nb[kb]
        boot = (ratio_of_sums(bootstrap_weights(Sa.size, n_boot, rng), Sa, Na)
                - ratio_of_sums(bootstrap_weights(Sb.size, n_boot, rng), Sb, Nb))
        jack = [ratio_of_sums(jackknife_weights(Sa.size), Sa, Na) - Sb.sum() / Nb.sum(),
                Sa.sum() / Na.sum() - ratio_of_sums(jackknife_weights(Sb.size), Sb, Nb)]
    finite = boot[np.isfinite(boot)]
    if finite.size == 0 or np.ptp(finite) == 0:
        # Every resample gives the same difference: no interval to report. An exact zero gets no p
        # either; a non-zero difference keeps its permutation p (moving traces between the runs
        # does change the statistic), so "every trace agrees" is still tested.
        if estimate == 0:
            return {"diff": 0.0, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "ci_method": "exact zero",
                    "p": np.nan, "p_method": "none", "note": "no change in either run: exact zero, no CI or p"}
        p, p_method = _permutation_p((Sa, Na), (Sb, Nb), paired=paired, rng=rng, n_perm=n_perm)
        return {"diff": estimate, "diff_ci_low": np.nan, "diff_ci_high": np.nan, "ci_method": "none (no variation)",
                "p": p, "p_method": p_method, "note": "every resample gives this difference: no CI"}
    low, high, method = interval(boot, estimate, jack, level=level)
    p, p_method = _permutation_p((Sa, Na), (Sb, Nb), paired=paired, rng=rng, n_perm=n_perm)
    return {"diff": estimate, "diff_ci_low": low, "diff_ci_high": high, "ci_method": method, "p": p,
            "p_method": p_method, "note": ""}


def _permutation_p(a: tuple, b: tuple, *, paired: bool, rng: np.random.Generator, n_perm: int) -> tuple[float, str]:
    """Two-sided permutation p-value of the difference of ratio estimators.

    The samples handed to scipy are trace indices into the pooled (S, N) arrays, so each
    permutation moves whole traces: paired, the two runs' values of a trace swap places (null:
    within a trace the runs are exchangeable); independent, traces are reassigned between the
    runs (null: both runs' traces come from one distribution).
    """
    (Sa, Na), (Sb, Nb) = a, b
    if not paired:
        Sa, Na, Sb, Nb = Sa[Na > 0], Na[Na > 0], Sb[Nb > 0], Nb[Nb > 0]
    S, N = np.concatenate([Sa, Sb]), np.concatenate([Na, Nb])
    ia, ib = np.arange(Sa.size), Sa.size + np.arange(Sb.size)

    def statistic(x, y, axis=-1):
        with np.errstate(divide="ignore", invalid="ignore"):
            return S[x].sum(axis) / N[x].sum(axis) - S[y].sum(axis) / N[y].sum(axis)

    kind = "samples" if paired else "independent"
    res = stats.permutation_test((ia, ib), statistic, permutation_type=kind, vectorized=True, n_resamples=n_perm,
                                 alternative="two-sided", rng=rng)
    n_total = 2 ** Sa.size if paired else special.comb(Sa.size + Sb.size, Sa.size, exact=True)
    how = "exact" if n_total <= n_perm else f"Monte Carlo ({n_perm})"
    return float(res.pvalue), f"permutation, {'within-trace swap' if paired else 'traces between runs'}, {how}"


# --------------------------------------------------------------------------------------------
# the comparison
# --------------------------------------------------------------------------------------------


@dataclass
class Comparison:
    """What :func:`compare_runs` produced.

    ``table``: one row per aligned layer x condition x (run vs reference), columns ``COLUMNS``;
    ``effects``: one row per run (or condition) x aligned layer, columns ``EFFECT_COLUMNS``;
    ``notes``: which runs were left out of which layers, pairing, and anything else to know.
    """

    table: pd.DataFrame
    effects: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    def row_sides(self) -> list[tuple[str, str]]:
        """Short names of the two sides of each table row (see :func:`side_labels`)."""
        t = self.table
        return [side_labels(r, c, rr, rc) for r, c, rr, rc in
                zip(t["run"], t["condition"], t["ref_run"], t["ref_condition"])]


def compare_runs(
    runs, *, measure: str = "is_sink", align: str = "layer", conditions: list[str] | None = None,
    group: str = "targets", bins: int | None = None, l_starts: dict[str, int] | None = None,
    pairs: str = "reference", paired: bool | None = None, labels: list[str] | None = None,
    n_boot: int = N_BOOT_MIN, n_perm: int = N_PERM, seed: int = 0, level: float = LEVEL,
    correction: str = "holm",
) -> Comparison:
    """Put the per-layer effects of several runs on one axis and compare them; see :func:`compare_effects`."""
    runs = load_runs(runs, labels)
    for name, layer in (l_starts or {}).items():
        match = [r for r in runs if r.label == name or str(r.path) == str(name) or r.path.name == name]
        if not match:
            raise UserError(f"l_starts names {name!r}, which is none of the runs ({', '.join(r.label for r in runs)})",
                            field="l_starts")
        for r in match:
            r.l_start = int(layer)
    _check(runs, measure, align, group, correction, n_boot)
    if pairs not in ("reference", "all"):
        raise UserError(f"pairs must be reference or all, got {pairs!r}", field="pairs")
    bins = bins or min(r.n_layers for r in runs)
    series = _series(runs, measure, align, conditions, group, bins)
    notes: list[str] = []
    if align == "l_start":
        notes.append("l_start per run (modal secondary-sink start layer of its clean pass, or --l-start): "
                     + ", ".join(f"{r.label} {r.l_start}" for r in runs))

    # Each series' effect at each of its aligned layers (the figure's lines).
    effect_rows, cache = [], {}
    for si, s in enumerate(series):
        for xi, x in enumerate(sorted(s.units["x"].unique())):
            u, layers = s.at(x)
            traces = np.unique(u["trace"].to_numpy())
            S, N = _trace_sums(u, traces)
            if np.all(u["diff"].to_numpy() == 0):
                est = {"n_traces": int(traces.size), "n_targets": int(N.sum()), "effect": 0.0, "ci_low": np.nan,
                       "ci_high": np.nan, "ci_method": "exact zero"}
            else:
                est = _effect_ci(S, N, n_boot=n_boot, rng=np.random.default_rng([seed, 0, si, xi]), level=level)
            cache[(si, x)] = (u, layers, est)
            effect_rows.append({"measure": measure, "group": group, "align": align, "series": s.label,
                                "run": s.run.label, "condition": s.condition, "x": x, "layers": layers, **est})
    effects = pd.DataFrame(effect_rows, columns=EFFECT_COLUMNS)

    # Differences, pair by pair, on the aligned layers both series have.
    rows = []
    if align == "condition":  # one model: every condition against the first (or every pair)
        compared = [(0, j) for j in range(1, len(series))] if pairs == "reference" else \
            [(i, j) for i in range(len(series)) for j in range(i + 1, len(series))]
    else:  # runs compared condition by condition
        compared = _run_pairs(series, pairs)
    for pi, (ri, oi) in enumerate(compared):
        ref, other = series[ri], series[oi]
        is_paired = shares_traces_and_model(ref.run, other.run) if paired is None else paired
        how = ("paired by trace (same model and traces)" if is_paired else
               "independent (traces resampled within each run)")
        if is_paired and not shares_traces_and_model(ref.run, other.run):
            how = "paired by trace index as asked, although the runs do not share traces and model"
        if other.run is not ref.run and f"{other.run.label} vs {ref.run.label}: {how}" not in notes:
            notes.append(f"{other.run.label} vs {ref.run.label}: {how}")
        common = sorted(set(ref.units["x"]) & set(other.units["x"]))
        for xi, x in enumerate(common):
            (ur, lr, er), (uo, lo, eo) = cache[(ri, x)], cache[(oi, x)]
            row = {"measure": measure, "group": group, "align": align, "x": x, "condition": other.condition,
                   "run": other.run.label, "ref_condition": ref.condition, "ref_run": ref.run.label, "layers": lo,
                   "ref_layers": lr, **{k: eo[k] for k in ("n_traces", "n_targets", "effect", "ci_low", "ci_high")},
                   **{f"ref_{k}": er[k] for k in ("n_traces", "n_targets", "effect", "ci_low", "ci_high")},
                   "paired": bool(is_paired)}
            if is_paired and _identical(ur, uo):
                row.update(diff=0.0, diff_ci_low=np.nan, diff_ci_high=np.nan, ci_method="exact zero", p=np.nan,
                           p_method="none", note="identical target rows: exact zero, no CI or p")
            else:
                traces = np.union1d(ur["trace"].unique(), uo["trace"].unique()) if is_paired else None
                a = _trace_sums(uo, traces if is_paired else np.unique(uo["trace"]))
                b = _trace_sums(ur, traces if is_paired else np.unique(ur["trace"]))
                row.update(_difference(a, b, paired=is_paired, n_boot=n_boot, n_perm=n_perm, level=level,
                                       rng=np.random.default_rng([seed, 1, pi, xi])))
            rows.append(row)
    _dropped(series, compared, notes, align)
    if not rows:
        spans = "; ".join(f"{s.label}: {_span(s.units['x'])}" for s in series)
        raise UserError(f"aligning on {AXIS_NAME[align]} leaves no layer in common ({spans}); try another --align",
                        field="align")
    table = pd.DataFrame(rows)
    correction = canonical_correction(correction)
    table["p_adj"], table["correction"] = adjust(table["p"].to_numpy(float), correction), correction
    table = table[COLUMNS]
    settings = {"measure": measure, "align": align, "axis": AXIS_NAME[align], "group": group,
                "bins": bins if align == "depth" else None, "pairs": pairs, "n_boot": n_boot, "n_perm": n_perm,
                "seed": seed, "level": level, "correction": correction,
                "runs": [{"label": r.label, "path": str(r.path), "model": r.model_id[0], "n_layers": r.n_layers,
                          "l_start": r.l_start, "run_id": r.manifest.get("run_id")} for r in runs]}
    table.attrs["notes"] = list(notes)
    return Comparison(table=table, effects=effects, notes=notes, settings=settings)


def compare_effects(runs, *, measure: str, align: str = "layer", conditions: list[str] | None = None,
                    **options) -> pd.DataFrame:
    """Compare the per-layer effects of two or more runs on one layer axis; a tidy DataFrame.

    Args:
        runs: run folders (``results/<name>/<run id>``; ``results/<name>`` means its newest
            complete run) or ``RunResult`` objects. The first is the reference.
        measure: a per-layer measure: ``is_sink`` (effect = change in the fraction of targets
            that are sinks), ``hidden_cos``, ``hidden_norm``, ``mlp_out_norm``, ``sink_score``,
            ``primary_sink_score``.
        align: ``layer`` (absolute), ``depth`` (``layer / (L - 1)`` in ``bins`` bins; default
            bins: the smallest depth among the runs), ``l_start`` (layers since each run's modal
            ``l_start``; override with ``l_starts={label: layer}``) or ``condition`` (one
            model: each condition against the first, at the same layer).
        conditions: condition ids to compare (default: those all runs have; with
            ``align="condition"``: every condition of the runs, the first is the reference).
        **options: ``group`` (``targets``/``controls``), ``bins``, ``l_starts``, ``pairs``
            (``reference``: every run against the first; ``all``: every pair), ``paired``
            (None: pair by trace when two runs share traces and model), ``labels``, ``n_boot``
            (>= 2000), ``n_perm``, ``seed``, ``level``, ``correction`` (``holm``, ``bh``
            (Benjamini-Hochberg; ``fdr_bh`` is accepted as the same), ``bonferroni``, ``none``; across
            every row of the table).

    Returns:
        One row per aligned layer ``x`` x condition x (``run`` vs ``ref_run``): each side's
        effect with its CI and n, ``diff = effect - ref_effect`` with ``diff_ci_low/high``,
        ``p`` and ``p_adj``. An exact zero (identical rows of paired runs) has ``diff`` 0 and
        NaN CI and p. ``.attrs["notes"]`` says which runs were dropped from which layers.

    Raises:
        UserError: one line, for runs that cannot be compared (a measure one run lacks, no
            per-layer effects, no common layer after alignment, different models with
            ``align="condition"``).

    Example:
        >>> table = compare_effects(["results/mlp_zero", "results/mlp_zero_llama"], measure="is_sink")
        >>> table[["x", "run", "effect", "ref_effect", "diff", "diff_ci_low", "diff_ci_high", "p_adj"]]
    """
    return compare_runs(runs, measure=measure, align=align, conditions=conditions, **options).table


def _series(runs: list[Run], measure: str, align: str, conditions, group: str, bins: int) -> list[_Series]:
    """What is compared: (run, condition) series with their aligned units."""
    if align == "condition":
        wanted = conditions or list(dict.fromkeys(c for r in runs for c in r.conditions))
        pairs = [(r, c) for r in runs for c in wanted if c in r.conditions]
        unknown = [c for c in wanted if not any(c in r.conditions for r in runs)]
        if unknown:
            raise UserError(f"no run has condition(s) {', '.join(unknown)}; the runs have "
                            f"{', '.join(dict.fromkeys(c for r in runs for c in r.conditions))}", field="conditions")
        if len(pairs) < 2:
            raise UserError("--align condition needs at least two conditions to compare; the runs have only "
                            f"{', '.join(c for _, c in pairs)}", field="conditions")
        many = len(runs) > 1
        label = (lambda r, c: f"{r.label}: {c}") if many else (lambda r, c: c)
    else:
        common = [c for c in runs[0].conditions if all(c in r.conditions for r in runs[1:])]
        wanted = conditions or common
        for r in runs:
            missing = [c for c in wanted if c not in r.conditions]
            if missing:
                raise UserError(f"run {r.label} has no condition {', '.join(missing)} (it has "
                                f"{', '.join(r.conditions)})", field="conditions")
        if not wanted:
            raise UserError("the runs share no condition: " + "; ".join(
                f"{r.label}: {', '.join(r.conditions)}" for r in runs) + "; name the ones to compare", field="conditions")
        pairs = [(r, c) for c in wanted for r in runs]
        label = lambda r, c: r.label  # noqa: E731
    out = []
    for r, c in pairs:
        units = _units(r, c, measure, group, axis_of(r, align, bins=bins))
        if units.empty:
            raise UserError(f"run {r.label} has no {group} rows with finite {measure} for condition {c}",
                            field="group")
        out.append(_Series(r, c, label(r, c), units))
    return out


def _run_pairs(series: list[_Series], pairs: str) -> list[tuple[int, int]]:
    """Index pairs of series with the same condition: each against the first run, or every pair."""
    out = []
    by_condition: dict[str, list[int]] = {}
    for i, s in enumerate(series):
        by_condition.setdefault(s.condition, []).append(i)
    for idx in by_condition.values():
        out += [(idx[0], j) for j in idx[1:]] if pairs == "reference" else \
            [(i, j) for k, i in enumerate(idx) for j in idx[k + 1:]]
    return out


def _identical(a: pd.DataFrame, b: pd.DataFrame) -> bool:
    """The same targets with bit-identical changes."""
    return len(a) == len(b) and a[["trace", "position"]].equals(b[["trace", "position"]]) and \
        np.array_equal(a["diff"].to_numpy(), b["diff"].to_numpy())


def side_labels(run: str, condition: str, ref_run: str, ref_condition: str) -> tuple[str, str]:
    """Short names of the two sides of a comparison row: the run, the condition, or both where both differ."""
    if run == ref_run:
        return condition, ref_condition
    if condition == ref_condition:
        return run, ref_run
    return f"{run}: {condition}", f"{ref_run}: {ref_condition}"


def _span(xs) -> str:
    xs = sorted(set(xs))
    return f"{xs[0]}..{xs[-1]}" if xs else "none"


def _dropped(series: list[_Series], compared: list[tuple[int, int]], notes: list[str], align: str) -> None:
    """Note, per series, the aligned layers it has that its comparison partner lacks (left out)."""
    for ri, oi in compared:
        for a, b in ((series[ri], series[oi]), (series[oi], series[ri])):
            only = sorted(set(a.units["x"]) - set(b.units["x"]))
            if only:
                layers = sorted(a.units.loc[a.units["x"].isin(only), "layer"].unique())
                notes.append(f"{a.label} dropped from {AXIS_NAME[align]} {_compact(only)} (its layers "
                             f"{_compact(layers)}): {b.label} has no rows there")


def _compact(values) -> str:
    values = list(values)
    if all(float(v).is_integer() for v in values):
        ints = [int(v) for v in values]
        runs, start = [], ints[0]
        for prev, cur in zip(ints, ints[1:] + [None]):
            if cur != prev + 1:
                runs.append(f"{start}" if start == prev else f"{start}..{prev}")
                start = cur
        return ", ".join(runs)
    return ", ".join(f"{v:g}" for v in values)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


def write_comparison(comparison: Comparison, out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``comparison.parquet``/``.csv``, ``effects.parquet``/``.csv``, ``comparison.json`` and the figures."""
    from interventions.store import write_json_atomic, write_parquet_atomic, write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"comparison": out / "comparison.parquet", "comparison_csv": out / "comparison.csv",
             "effects": out / "effects.parquet", "effects_csv": out / "effects.csv", "json": out / "comparison.json"}
    write_parquet_atomic(paths["comparison"], comparison.table)
    write_text_atomic(paths["comparison_csv"], comparison.table.to_csv(index=False))
    write_parquet_atomic(paths["effects"], comparison.effects)
    write_text_atomic(paths["effects_csv"], comparison.effects.to_csv(index=False))
    write_json_atomic(paths["json"], {"settings": comparison.settings, "notes": comparison.notes})
    if figures:
        from interventions.report.compare_figures import difference_heatmap, effect_lines

        paths["effect_lines"] = effect_lines(comparison, out / "effects_by_layer.png")
        paths["heatmap"] = difference_heatmap(comparison, out / "difference_heatmap.png")
    return paths
