"""Table-level nulls for calibration: synthetic run tables where the claim is false by construction.

Each function returns the ``tables`` dict a run folder loads into (:func:`interventions.stats.analysis.load_run`:
effects, clean_sinks, sink_layers, clean_profile, sink_window, manifest), so the verdicts come out of
exactly the function a run calls (:func:`interventions.stats.analysis.compute_stats`), not a parallel copy.

"Noise around the threshold": every unit (target or comparison) has a latent clean cosine to BOS near
0.95 drawn from ONE distribution (a per-trace shift plus a per-unit spread), and the edit adds the same
noise to both arms. Whether a unit ends up across 0.95 is then chance, identical in law for targets and
comparison units, so a verdict of "supported" is a false positive.

* ``h1_controls``: H1 (zero at l_start, sink_rate_change) vs matched controls (``is_control`` rows of the
  same condition), where the controls are clean sinks from the same distribution.
* ``h1_placebo``: the same against a placebo condition (``zero.mlp_output.L2.placebo`` on the same targets).
* ``h3_placebo``: H3 (mean swap before l_start, suppression_rate) vs a placebo condition.
* ``h1_nonsink_controls``: the noisy-h1 situation in a table: targets are near-threshold clean sinks given
  the noise, the controls are non-sinks far below 0.95 given the same noise (they can never lose a sink).
  The claim is false (the edit is noise), but targets-minus-controls is negative: comparing clean sinks
  with non-sink controls is the defect of issue 18.
* ``h1_partly_templated``: ``h1_placebo`` on traces that share a templated prompt: every trace has
  ``per_trace`` sinks of its own and 3 sinks in the shared prompt, whose clean and edited cosines are one
  draw for all traces (the same tokens give the same activations), in both arms. Counting the template
  once per trace made its one chance offset look like G agreeing traces.
* ``h2_placebo``: H2 (scale the l_start MLP output, lifetime_slope) vs its noise placebo. Near-threshold
  non-sinks (factors 2, 5, 10) and clean sinks (0.5, 2): at every dose, in both arms, a token is a sink when its
  latent cosine plus fresh noise clears 0.95, and a sink's lifetime is its clean one give or take a layer, so
  the lifetime moves at random with the edit and not with the norm.
* ``h4_controls``: H4 (attention mask; primary_beyond_renormalisation and kl) vs matched controls, both
  arms' per-trace outcomes from one distribution.
* ``h4_mass_driven``: H4 where both outcomes follow only the attention mass a mask removes (the same law for
  sinks and ordinary tokens), and the control sets fall short the way the matcher's do when a trace lacks
  ordinary mass: in half the traces they reach the targets' mass, in the other half 0.5-0.7x of it (inside
  the symmetric 0.5-2x caliper). The targets then remove more mass, and "win", in half the traces.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

COS_MIN = 0.95
L_START, LIFETIME, N_LAYERS = 4, 6, 12

BASE = {  # every column a run's effects table has; values for what the verdicts do not read
    "condition": "", "kind": "", "site": "mlp_output", "intervened_layer": L_START, "intervened_layers": str(L_START),
    "target_set": "sinks", "is_control": False, "trace": 0, "position": 0, "token": "x", "token_id": 0,
    "clean_kind": "secondary", "l_start": L_START, "lifetime": LIFETIME, "clean_l_start": L_START,
    "clean_lifetime": LIFETIME, "ref_layer": L_START, "ref_mlp_out_norm": 1.0, "clean_ref_mlp_out_norm": 1.0,
    "ref_sink_score": 0.1, "clean_ref_sink_score": 0.1, "kl": np.nan, "delta_nll": np.nan, "suppressed": False,
    "layer": L_START, "hidden_norm": 20.0, "clean_hidden_norm": 20.0, "hidden_cos": 0.96, "clean_hidden_cos": 0.96,
    "mlp_out_norm": 1.0, "clean_mlp_out_norm": 1.0, "sink_score": 0.1, "clean_sink_score": 0.1,
    "primary_sink_score": 0.8, "clean_primary_sink_score": 0.8, "is_sink": True, "clean_is_sink": True,
    "factor": np.nan, "redirect": None, "masked": False, "renorm_primary_sink_score": np.nan,
    "masked_attention_mass": np.nan, "coefficient": np.nan, "direction": None, "heads": None, "head_mode": None,
    "source_trace": np.nan, "source_position": np.nan, "keep_first": np.nan, "window": np.nan, "non_finite": False,
}
NULLS = ("h1_controls", "h1_placebo", "h3_placebo", "h4_controls", "h1_nonsink_controls", "h1_partly_templated",
         "h4_mass_driven", "h2_placebo")


def _cosines(rng, n: int, shift: float, *, spread: float = 0.01, noise: float = 0.01) -> tuple[np.ndarray, np.ndarray]:
    """(clean, edited) cosines of ``n`` clean sinks: clean > 0.95 from one near-threshold law, edited =
    clean + noise (the same law in every arm)."""
    clean = np.empty(0)
    while clean.size < n:
        c = COS_MIN + shift + rng.normal(0, spread, size=4 * n)
        clean = np.concatenate([clean, c[c > COS_MIN]])
    clean = clean[:n]
    return clean, clean + rng.normal(0, noise, size=n)


def _sink_rows(cond: dict, trace: int, first_pos: int, clean: np.ndarray, edited: np.ndarray, *,
               is_control: bool, layer: int) -> list[dict]:
    rows = []
    for i, (c, e) in enumerate(zip(clean, edited)):
        alive = bool(e > COS_MIN)
        rows.append({**BASE, "condition": cond["id"], "kind": cond["kind"], "site": cond["site"],
                     "intervened_layer": layer, "intervened_layers": str(layer), "is_control": is_control,
                     "target_set": "ctrl" if is_control else "sinks", "trace": trace, "position": first_pos + i,
                     "lifetime": LIFETIME if alive else 0, "l_start": L_START if alive else np.nan,
                     "suppressed": not alive, "hidden_cos": float(e), "clean_hidden_cos": float(c),
                     "is_sink": alive})
    return rows


def _manifest(conditions: list[dict], name: str) -> dict:
    return {"run_id": f"table-null-{name}", "spec_name": f"table-null-{name}", "seed": 0, "conditions": conditions,
            "model": {"dtype": "float32"}, "spec": {}}


def _tables(effects: pd.DataFrame, conditions: list[dict], name: str) -> dict:
    empty_sinks = pd.DataFrame(columns=["trace", "position", "kind", "l_start", "lifetime", "mlp_out_norm", "censored"])
    return {"effects": effects, "sink_layers": pd.DataFrame(), "clean_profile": pd.DataFrame(),
            "sink_window": pd.DataFrame(), "clean_sinks": empty_sinks, "manifest": _manifest(conditions, name)}


def _cond(cid: str, kind: str, site: str, layer, controls) -> dict:
    return {"id": cid, "kind": kind, "site": site, "layer": layer, "factor": None, "targets": ["sinks"],
            "controls": controls, "redirect": None, "params": {}, "intervention": 0}


def _h4_rows(cond: dict, trace: int, is_control: bool, rng, *, mass: float, kl: float, noise: float,
             kl_spread: float, beyond: float = 0.0, shift: float = 0.0) -> list[dict]:
    """One arm's rows of an H4 trace: layers 5-8 masked, removing ``mass``; the primary sink score there is its
    renormalisation prediction plus ``beyond``, every layer's plus ``shift`` and fresh noise; KL is ``kl`` times a
    lognormal of sd ``kl_spread``."""
    rows = []
    for layer in range(N_LAYERS):
        masked = 5 <= layer <= 8
        clean = 0.8 + 0.01 * layer
        predicted = clean + 0.02 if masked else np.nan
        observed = (predicted + beyond if masked else clean) + shift + rng.normal(0, noise)
        rows.append({**BASE, "condition": cond["id"], "kind": "attention_mask", "site": None,
                     "intervened_layer": 5, "intervened_layers": "5,6,7,8", "is_control": is_control,
                     "target_set": "ctrl" if is_control else "sinks", "trace": trace,
                     "position": 100 if is_control else 1, "layer": layer, "masked": masked,
                     "primary_sink_score": observed, "clean_primary_sink_score": clean,
                     "renorm_primary_sink_score": predicted, "masked_attention_mass": mass if masked else np.nan,
                     "kl": kl * rng.lognormal(0, kl_spread)})
    return rows


def null_tables(name: str, G: int, seed: int, *, per_trace: int = 3, trace_sd: float = 0.01) -> dict:
    """Synthetic run tables of table-level null ``name`` (one of :data:`NULLS`) with ``G`` traces."""
    if name not in NULLS:
        raise ValueError(f"unknown table null {name!r}; known: {', '.join(NULLS)}")
    rng = np.random.default_rng(seed)
    rows: list[dict] = []
    if name == "h1_nonsink_controls":
        main = _cond("zero.mlp_output.l_start", "zero", "mlp_output", "l_start", "ctrl")
        conditions = [main]
        for g in range(G):
            shift = rng.normal(0, trace_sd)
            rows += _sink_rows(main, g, 1, *_cosines(rng, per_trace, shift), is_control=False, layer=L_START)
            far = rng.normal(0.3, 0.05, size=per_trace)
            ctrl = _sink_rows(main, g, 100, far, far + rng.normal(0, 0.01, size=per_trace), is_control=True,
                              layer=L_START)
            for r in ctrl:
                r.update(clean_kind=None, clean_lifetime=0, clean_l_start=np.nan, clean_is_sink=False)
            rows += ctrl
    elif name == "h1_partly_templated":
        main = _cond("zero.mlp_output.l_start", "zero", "mlp_output", "l_start", None)
        placebo = _cond("zero.mlp_output.L2.placebo", "zero", "mlp_output", 2, None)
        placebo["params"]["placebo_of"] = main["id"]
        conditions = [main, placebo]
        template = {c["id"]: _cosines(rng, 3, rng.normal(0, trace_sd)) for c in conditions}
        for g in range(G):
            shift = rng.normal(0, trace_sd)
            for c, layer in ((main, L_START), (placebo, 2)):
                shared = _sink_rows(c, g, 1, *template[c["id"]], is_control=False, layer=layer)
                own = _sink_rows(c, g, 100, *_cosines(rng, per_trace, shift), is_control=False, layer=layer)
                for r in shared:
                    r["prefix_hash"] = f"template:{r['position']}"
                for r in own:
                    r["prefix_hash"] = f"{g}:{r['position']}"
                rows += shared + own
    elif name in ("h1_controls", "h1_placebo"):
        main = _cond("zero.mlp_output.l_start", "zero", "mlp_output", "l_start",
                     "ctrl" if name == "h1_controls" else None)
        conditions = [main]
        if name == "h1_placebo":
            conditions.append(_cond("zero.mlp_output.L2.placebo", "zero", "mlp_output", 2, None))
            conditions[-1]["params"]["placebo_of"] = main["id"]
        for g in range(G):
            shift = rng.normal(0, trace_sd)
            rows += _sink_rows(main, g, 1, *_cosines(rng, per_trace, shift), is_control=False, layer=L_START)
            other = conditions[-1]
            rows += _sink_rows(other, g, 100, *_cosines(rng, per_trace, shift), is_control=name == "h1_controls",
                               layer=L_START if name == "h1_controls" else 2)
    elif name == "h3_placebo":
        main = _cond("mean_swap.block_output.L2", "mean_swap", "block_output", 2, None)
        placebo = _cond("mean_swap.block_output.L2.placebo", "mean_swap", "block_output", 2, None)
        placebo["params"]["placebo_of"] = main["id"]
        conditions = [main, placebo]
        for g in range(G):
            shift = rng.normal(0, trace_sd)
            rows += _sink_rows(main, g, 1, *_cosines(rng, per_trace, shift), is_control=False, layer=2)
            rows += _sink_rows(placebo, g, 1, *_cosines(rng, per_trace, shift), is_control=False, layer=2)
        for r in rows:
            r["site"] = "block_output"
    elif name == "h2_placebo":
        conditions, matched = [], {}
        for target_set, factors in (("weak", (2, 5, 10)), ("sinks", (0.5, 2))):
            for f in factors:
                scale = _cond(f"scale.mlp_output.l_start.x{f}.{target_set}", "scale", "mlp_output", "l_start", None)
                scale.update(factor=f, targets=[target_set])
                placebo = _cond(f"noise.mlp_output.l_start.x{f}.{target_set}.placebo", "noise", "mlp_output",
                                "l_start", None)
                placebo.update(targets=[target_set], params={"placebo_of": scale["id"]})
                matched[placebo["id"]] = f
                conditions += [scale, placebo]
        for g in range(G):
            shift = rng.normal(0, trace_sd)
            for target_set, first, below in (("weak", 1, True), ("sinks", 100, False)):
                latent = COS_MIN + shift + (-1 if below else 1) * np.abs(rng.normal(0.005, 0.005, size=per_trace))
                for c in conditions:
                    if c["targets"] != [target_set]:
                        continue
                    dose = {"factor": c["factor"]} if c["kind"] == "scale" else {"matched_factor": matched[c["id"]]}
                    for i, cos in enumerate(latent):
                        edited = cos + rng.normal(0, 0.01)
                        alive = bool(edited > COS_MIN)
                        lifetime = (LIFETIME + int(rng.integers(-1, 2))) if alive else 0
                        rows.append({**BASE, "condition": c["id"], "kind": c["kind"], "target_set": target_set,
                                     "trace": g, "position": first + i, "layer": L_START, "factor": np.nan,
                                     "matched_factor": np.nan, **dose, "lifetime": lifetime,
                                     "l_start": L_START if alive else np.nan, "is_sink": alive,
                                     "suppressed": (not alive) and not below, "hidden_cos": float(edited),
                                     "clean_hidden_cos": float(cos), "clean_is_sink": not below,
                                     "clean_kind": None if below else "secondary",
                                     "clean_lifetime": 0 if below else LIFETIME,
                                     "clean_l_start": np.nan if below else L_START})
    elif name == "h4_mass_driven":  # outcomes follow the removed mass only; controls short in half the traces
        main = _cond("attention_mask.sink_lifetime", "attention_mask", None, "sink_lifetime", "ctrl")
        conditions = [main]
        for g in range(G):
            target_mass = rng.lognormal(np.log(0.05), 0.8)
            ratio = 1.0 + rng.uniform(0, 0.02) if rng.random() < 0.5 else rng.uniform(0.5, 0.7)
            for is_control in (False, True):
                mass = target_mass * (ratio if is_control else 1.0)
                # the same law in both arms: a bigger mask moves more
                rows += _h4_rows(main, g, is_control, rng, mass=mass, beyond=2.0 * mass, kl=20.0 * mass ** 1.5,
                                 noise=0.002, kl_spread=0.2)
    else:  # h4_controls: per-trace primary score beyond renormalisation and KL, one law for both arms
        main = _cond("attention_mask.sink_lifetime", "attention_mask", None, "sink_lifetime", "ctrl")
        conditions = [main]
        for g in range(G):
            shift, kl_scale = rng.normal(0, 0.01), rng.lognormal(-4, 0.5)
            for is_control in (False, True):
                rows += _h4_rows(main, g, is_control, rng, mass=0.1, shift=shift, kl=kl_scale, noise=0.01,
                                 kl_spread=0.3)
    return _tables(pd.DataFrame(rows), conditions, name)


NULL_HYPOTHESIS = {"h1_nonsink_controls": "H1", "h1_controls": "H1", "h1_placebo": "H1", "h3_placebo": "H3",
                   "h4_controls": "H4", "h1_partly_templated": "H1", "h4_mass_driven": "H4",
                   "h2_placebo": "H2"}
"""Which verdict key each table null is read at."""
