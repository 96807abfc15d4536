"""Where secondary sinks come from: the MLP of their creation layer (paper Sec. 4, Figs. 4 and 5).

Two observational checks on *future secondary sinks* (tokens that become secondary sinks at
layer ``l_start``), both read at that layer:

1. **Cosine through the MLP** (Fig. 4, right). Per future sink, from the observation pass
   (:data:`interventions.observation.PROFILE_COLUMNS`): ``mlp_in_cos`` (its MLP input against the
   primary sink's MLP input), ``mlp_out_cos`` (its MLP output against the primary sink's
   hidden state, the sink direction) and ``hidden_cos`` before (output of layer ``l_start - 1``)
   and after (output of ``l_start``). The paper: inputs are far from the sink direction, the
   MLP output is almost fully aligned with it.
2. **Principal components through the MLP** (Fig. 5). Stack the MLP inputs of the future
   sinks at ``l_start`` (rows of X), take the top principal components PC_i (unit vectors;
   centred PCA by default), feed ``+alpha PC_i`` and ``-alpha PC_i`` through that layer's MLP
   (alpha = median norm of the rows of X) and read the output's norm and its cosine to the
   sink direction d (the primary sink's hidden state at ``l_start``, averaged over traces).
   The paper: for each PC one sign gives an output along d with a large norm (the MLP
   "selectively amplifies the component aligned with the BOS sink"), the other does not.

Verdict rule (:data:`ORIGIN_RULE`, applied by :func:`judge_origin`)::

    inconclusive   fewer than min_sinks future sinks at the analysed layer
    supported      (a) median mlp_out_cos >= out_cos_min and median mlp_in_cos <= in_cos_max
                   (the MLP output is aligned with the sink direction, its input is not), and
                   (b) some top-k PC, fed with + or - alpha, gives an output with
                   cos(output, d) >= out_cos_min and ||output|| >= norm_floor, where
                   norm_floor = norm_ratio (or, without a norm gate, massive_ratio) x the median hidden-state norm of the layer (the
                   norm a sink needs under the detection rule): the MLP alone turns that
                   component into a sink-sized vector along the sink direction
    not supported  otherwise (the reason names the failing part)

Everything here is a pure function of arrays and tables except :func:`analyze_origin`, which
runs the forwards.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from interventions.detection.rules import DetectionConfig, Sink, detect_sinks

ORIGIN_RULE = (
    "inconclusive if fewer than {min_sinks} future sinks at the layer; supported if (a) the median MLP-output "
    "cosine to the sink direction is >= {out_cos_min} while the median MLP-input cosine is <= {in_cos_max}, and "
    "(b) at least one of the top {n_components} principal components of the future sinks' MLP inputs, scaled by "
    "+alpha or -alpha (alpha = median input norm) and fed through the MLP, gives an output with cosine >= "
    "{out_cos_min} to the sink direction and norm >= norm_ratio x the layer's median hidden-state norm; "
    "not supported otherwise"
)

RANK_TOL = 1e-6
"""Singular values below this fraction of the largest are numerical noise, not components."""

COSINE_COLUMNS = ["trace", "position", "token", "token_id", "l_start", "lifetime", "mlp_in_cos", "mlp_out_cos",
                  "hidden_cos_before", "hidden_cos", "mlp_in_norm", "mlp_out_norm", "hidden_norm"]
PROBE_COLUMNS = ["pc", "sign", "explained", "input_norm", "out_norm", "out_cos", "aligned", "large", "maps_to_sink"]


@dataclass(frozen=True)
class OriginConfig:
    """Settings of the origin analysis (recorded in origin.json)."""

    n_components: int = 8
    """Principal components fed through the MLP."""
    center: bool = True
    """Centre X before the PCA (standard PCA). False: SVD of X itself (PC1 ~ the mean input)."""
    alpha: float | None = None
    """Scale of +-PC_i; None: the median norm of the future sinks' MLP inputs."""
    out_cos_min: float = 0.95
    """Cosine to the sink direction at which an MLP output counts as aligned."""
    in_cos_max: float = 0.5
    """Median MLP-input cosine at or below which the input counts as not (yet) aligned."""
    min_sinks: int = 5
    """Fewest future sinks for a verdict other than inconclusive."""
    layer: int | None = None
    """Layer to analyse; None: the most common l_start of the detected secondary sinks."""


@dataclass
class OriginResult:
    """What the origin analysis found (also written to ``out`` when one is given)."""

    layer: int | None
    cosines: pd.DataFrame
    """One row per future sink (every secondary sink, at its own l_start): COSINE_COLUMNS."""
    probe: pd.DataFrame
    """One row per (PC, sign) at ``layer``: PROBE_COLUMNS."""
    verdict: dict
    summary: dict = field(default_factory=dict)
    sinks: list[Sink] = field(default_factory=list)
    out: Path | None = None


# --------------------------------------------------------------------------------------------
# pure functions


def cosine_rows(obs, sinks: list[Sink]) -> list[dict]:
    """Per secondary sink of one trace: the profile values at its l_start (and hidden_cos just before)."""
    p = obs.profiles
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        l, t = s.l_start, s.position
        rows.append({
            "trace": s.trace, "position": t, "token": s.token, "token_id": s.token_id, "l_start": l,
            "lifetime": s.lifetime, "mlp_in_cos": float(p["mlp_in_cos"][l, t]),
            "mlp_out_cos": float(p["mlp_out_cos"][l, t]),
            "hidden_cos_before": float(p["hidden_cos"][l - 1, t]) if l > 0 else float("nan"),
            "hidden_cos": float(p["hidden_cos"][l, t]), "mlp_in_norm": float(p["mlp_in_norm"][l, t]),
            "mlp_out_norm": float(p["mlp_out_norm"][l, t]), "hidden_norm": float(p["hidden_norm"][l, t]),
        })
    return rows


def principal_components(X: np.ndarray, k: int, *, center: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` principal directions of the rows of ``X`` [n, D] and their explained-variance shares.

    Returns ``(components [k', D] unit rows, explained [k'])`` with ``k' = min(k, rank)``. Each
    component's sign is fixed so that its largest-magnitude coordinate is positive (the
    probe tries both signs anyway). ``explained`` is the share of the total (centred or not)
    sum of squares.
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0:
        raise ValueError(f"principal_components: X must be a non-empty [n, D] matrix, got shape {X.shape}")
    if center:
        X = X - X.mean(axis=0, keepdims=True)
    _, s, vt = np.linalg.svd(X, full_matrices=False)
    total = float((s**2).sum())
    keep = int(min(k, int((s > s[0] * RANK_TOL).sum()) if s.size and s[0] > 0 else 0))
    comps = vt[:keep]
    flip = np.sign(comps[np.arange(keep), np.abs(comps).argmax(axis=1)])
    comps = comps * flip[:, None]
    explained = (s[:keep] ** 2) / total if total > 0 else np.zeros(keep)
    return comps, explained


def _cos(a: np.ndarray, d: np.ndarray) -> np.ndarray:
    return (a @ d) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(d) + 1e-30)


def probe_table(outputs_pos: np.ndarray, outputs_neg: np.ndarray, direction: np.ndarray, explained: np.ndarray,
                *, alpha: float, out_cos_min: float, norm_floor: float) -> pd.DataFrame:
    """The Fig. 5 table from MLP outputs of ``+alpha PC_i`` and ``-alpha PC_i`` ([k, D] each)."""
    rows = []
    for sign, outs in ((1, outputs_pos), (-1, outputs_neg)):
        norms = np.linalg.norm(outs, axis=1)
        coss = _cos(outs, direction)
        for i in range(outs.shape[0]):
            aligned = bool(coss[i] >= out_cos_min)
            large = bool(norms[i] >= norm_floor)
            rows.append({"pc": i + 1, "sign": sign, "explained": float(explained[i]), "input_norm": float(alpha),
                         "out_norm": float(norms[i]), "out_cos": float(coss[i]), "aligned": aligned,
                         "large": large, "maps_to_sink": aligned and large})
    return pd.DataFrame(rows, columns=PROBE_COLUMNS).sort_values(["pc", "sign"], ascending=[True, False],
                                                                  ignore_index=True)


def judge_origin(cosines: pd.DataFrame, probe: pd.DataFrame, *, config: OriginConfig = OriginConfig(),
                 layer: int | None = None) -> dict:
    """Apply :data:`ORIGIN_RULE` (see the module docstring) to the two tables.

    ``cosines`` may hold sinks of several layers; only those with ``l_start == layer`` count
    (all of them when ``layer`` is None).
    """
    rule = ORIGIN_RULE.format(min_sinks=config.min_sinks, out_cos_min=config.out_cos_min,
                              in_cos_max=config.in_cos_max, n_components=config.n_components)
    at = cosines if layer is None else cosines[cosines["l_start"] == layer]
    n = int(len(at))
    base = {"rule": rule, "layer": layer, "n_future_sinks": n,
            "n_traces": int(at["trace"].nunique()) if n else 0}
    if n < config.min_sinks:
        return {**base, "verdict": "inconclusive", "reason": f"{n} future sinks at layer {layer} < {config.min_sinks}"}
    med_in = float(np.nanmedian(at["mlp_in_cos"]))
    med_out = float(np.nanmedian(at["mlp_out_cos"]))
    a = med_out >= config.out_cos_min and med_in <= config.in_cos_max
    hits = probe[probe["maps_to_sink"]] if len(probe) else probe
    b = bool(len(hits))
    parts = {
        "mlp_aligns": {"passed": bool(a), "median_mlp_in_cos": med_in, "median_mlp_out_cos": med_out,
                       "share_out_aligned": float((at["mlp_out_cos"] >= config.out_cos_min).mean())},
        "pc_maps_to_sink": {"passed": b, "pcs": sorted({int(p) for p in hits["pc"]}) if b else [],
                            "best": _best_probe(probe)},
    }
    if a and b:
        pcs = parts["pc_maps_to_sink"]["pcs"]
        reason = (f"median cos to the sink direction {med_in:.2f} at the MLP input -> {med_out:.3f} at its output; "
                  f"PC {', '.join(map(str, pcs))} map onto the sink direction")
        return {**base, "verdict": "supported", "reason": reason, "parts": parts}
    failing = []
    if not a:
        failing.append(f"MLP output median cos {med_out:.3f} (need >= {config.out_cos_min}) with input median cos "
                       f"{med_in:.3f} (need <= {config.in_cos_max})")
    if not b:
        failing.append("no principal component maps onto the sink direction with a sink-sized norm")
    return {**base, "verdict": "not supported", "reason": "; ".join(failing), "parts": parts}


def _best_probe(probe: pd.DataFrame) -> dict | None:
    if not len(probe):
        return None
    row = probe.sort_values(["out_cos", "out_norm"], ascending=False).iloc[0]
    return {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}


# --------------------------------------------------------------------------------------------
# running it on a model


def _capture_mlp_inputs(loaded, layers: set[int]):
    """One forward; returns {layer: [T, D] MLP input} for the given layers (plus what observe gives)."""
    import torch

    from interventions.models.adapters import decoder_layers, get_module

    blocks = decoder_layers(loaded.model, loaded.adapter)
    kept: dict[int, torch.Tensor] = {}
    handles = []
    for layer in sorted(layers):
        mlp = get_module(blocks[layer], loaded.adapter.mlp)

        def hook(module, args, layer=layer):
            kept[layer] = args[0][0].detach().float().cpu()

        handles.append(mlp.register_forward_pre_hook(hook))
    return kept, handles


def analyze_origin(loaded, traces, out: str | Path | None = None, *, config: OriginConfig = OriginConfig(),
                   detection: DetectionConfig = DetectionConfig(), progress: bool = True) -> OriginResult:
    """Run the origin analysis over tokenized ``traces`` on a :class:`~interventions.models.load.LoadedModel`.

    Per trace: one observed forward (profiles, detection; the MLP input of ``config.layer``
    captured in the same forward when given), and a second plain forward only when a
    secondary sink starts at a layer whose MLP input was not captured. Writes
    ``origin.json``, ``cosines.csv`` and ``pc_probe.csv`` into ``out`` when given.

    Example:
        >>> from interventions import load_model
        >>> from interventions.studies.origin import analyze_origin
        >>> loaded = load_model("testbed:planted")
        >>> result = analyze_origin(loaded, traces)          # traces from interventions.load_traces
        >>> result.verdict["verdict"], result.probe.head()
    """
    import time

    import torch

    from interventions.detection.job import decode_tokens
    from interventions.models.adapters import decoder_layers, get_module, mlp_to_residual
    from interventions.observation import observe_tokens
    from interventions.progress import track

    t0 = time.perf_counter()
    want = {config.layer} if config.layer is not None else set()
    rows: list[dict] = []
    inputs: dict[int, list[np.ndarray]] = {}
    directions: dict[int, list[np.ndarray]] = {}
    median_norms: dict[int, list[float]] = {}
    all_sinks: list[Sink] = []
    forwards = 0
    for tr in track(traces, description="origin: observing traces", enabled=progress):
        kept, handles = _capture_mlp_inputs(loaded, want)
        try:
            obs = observe_tokens(loaded, tr.token_ids, reference=detection.reference,
                                 massive_ratio=detection.massive_ratio)
        finally:
            for h in handles:
                h.remove()
        forwards += 1
        sinks = detect_sinks(obs, trace=tr.index, tokens=decode_tokens(loaded.tokenizer, tr.token_ids),
                             config=detection)
        secondary = [s for s in sinks if s.kind == "secondary"]
        all_sinks += sinks
        rows += cosine_rows(obs, secondary)
        needed = {s.l_start for s in secondary} - set(kept)
        if needed:
            more, handles = _capture_mlp_inputs(loaded, needed)
            try:
                with torch.inference_mode():
                    ids = torch.as_tensor(tr.token_ids, dtype=torch.long, device=loaded.input_device)[None]
                    loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
            finally:
                for h in handles:
                    h.remove()
            forwards += 1
            kept.update(more)
        for s in secondary:
            inputs.setdefault(s.l_start, []).append(kept[s.l_start][s.position].numpy())
        for layer in {s.l_start for s in secondary} | want:
            directions.setdefault(layer, []).append(obs.references["hidden"][layer].float().numpy())
            median_norms.setdefault(layer, []).append(float(np.median(obs.profiles["hidden_norm"][layer])))
    cosines = pd.DataFrame(rows, columns=COSINE_COLUMNS)

    layer = config.layer
    if layer is None and len(cosines):
        counts = cosines["l_start"].value_counts()
        layer = int(min(counts.index[counts == counts.max()]))
    probe = pd.DataFrame(columns=PROBE_COLUMNS)
    summary: dict = {"n_traces": len(traces), "forwards": forwards, "layer": layer,
                     "n_secondary": int(len(cosines)),
                     "l_start_counts": {int(k): int(v) for k, v in cosines["l_start"].value_counts().items()}}
    if layer is not None and inputs.get(layer):
        X = np.stack(inputs[layer])
        comps, explained = principal_components(X, config.n_components, center=config.center)
        alpha = float(config.alpha) if config.alpha is not None else float(np.median(np.linalg.norm(X, axis=1)))
        direction = np.mean([d / (np.linalg.norm(d) + 1e-30) for d in directions[layer]], axis=0)
        gate = detection.norm_ratio if detection.norm_ratio is not None else detection.massive_ratio
        norm_floor = gate * float(np.median(median_norms[layer]))
        block = decoder_layers(loaded.model, loaded.adapter)[layer]
        param = next(get_module(block, loaded.adapter.mlp).parameters())
        with torch.inference_mode():
            batch = torch.as_tensor(np.concatenate([alpha * comps, -alpha * comps]), dtype=param.dtype,
                                    device=param.device)[None]
            outs = mlp_to_residual(block, loaded.adapter, batch)[0].float().cpu().numpy()
        k = comps.shape[0]
        probe = probe_table(outs[:k], outs[k:], direction, explained, alpha=alpha, out_cos_min=config.out_cos_min,
                            norm_floor=norm_floor)
        full = principal_components(X, min(X.shape), center=config.center)[1]
        summary.update({"alpha": alpha, "norm_floor": norm_floor, "n_inputs": int(X.shape[0]),
                        "explained": [float(e) for e in explained],
                        "components_for_90pct": int(np.searchsorted(np.cumsum(full), 0.9) + 1)})
    verdict = judge_origin(cosines, probe, config=config, layer=layer)
    summary["seconds"] = round(time.perf_counter() - t0, 3)
    result = OriginResult(layer=layer, cosines=cosines, probe=probe, verdict=verdict, summary=summary,
                          sinks=all_sinks, out=Path(out) if out is not None else None)
    if out is not None:
        write_origin(result, Path(out), config=config, detection=detection)
    return result


def origin_summary_numbers(result: OriginResult) -> dict:
    """The numbers an experiment checks: medians of the cosines, best PC, verdict."""
    at = result.cosines[result.cosines["l_start"] == result.layer] if result.layer is not None else result.cosines
    probe = result.probe
    best = _best_probe(probe)
    large = probe[probe["aligned"]] if len(probe) else probe
    return {
        "layer": result.layer,
        "n_future_sinks": int(len(at)),
        "median_mlp_in_cos": float(np.nanmedian(at["mlp_in_cos"])) if len(at) else None,
        "median_mlp_out_cos": float(np.nanmedian(at["mlp_out_cos"])) if len(at) else None,
        "median_hidden_cos_before": float(np.nanmedian(at["hidden_cos_before"])) if len(at) else None,
        "median_hidden_cos": float(np.nanmedian(at["hidden_cos"])) if len(at) else None,
        "min_mlp_out_cos": float(at["mlp_out_cos"].min()) if len(at) else None,
        "max_mlp_in_cos": float(at["mlp_in_cos"].max()) if len(at) else None,
        "pcs_mapping_to_sink": sorted({int(p) for p in probe.loc[probe["maps_to_sink"], "pc"]}) if len(probe) else [],
        "best_pc": best,
        "max_aligned_out_norm": float(large["out_norm"].max()) if len(large) else None,
        "norm_floor": result.summary.get("norm_floor"),
        "alpha": result.summary.get("alpha"),
        "explained": result.summary.get("explained"),
        "verdict": result.verdict.get("verdict"),
    }


def write_origin(result: OriginResult, out: Path, *, config: OriginConfig, detection: DetectionConfig) -> None:
    from interventions.store import to_jsonable, write_json_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / "cosines.csv", result.cosines.to_csv(index=False))
    write_text_atomic(out / "pc_probe.csv", result.probe.to_csv(index=False))
    write_json_atomic(out / "origin.json", to_jsonable({
        "config": asdict(config), "detection": asdict(detection), "summary": result.summary,
        "numbers": origin_summary_numbers(result), "verdict": result.verdict,
    }))
