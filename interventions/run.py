"""The ``intervene run`` job: a spec's conditions against the clean model, measured per target.

Phase 1 observes every trace cleanly and detects its sinks (run-level facts such as the
model's usual ``l_start`` need all traces). Phase 2 goes trace by trace: resolve targets,
run each condition's edits (targets and controls in separate forwards, so a control never
sees a target's edit), measure, and write the trace's rows atomically.

Run folder ``results/<spec name>/<run id>/``::

    spec.yaml            the spec as written
    manifest.json        spec hash, model identity, versions, seed, timings per condition, traces done
    clean_sinks.jsonl    sinks of the clean run (as ``intervene detect`` writes them)
    sink_layers.parquet  one row per clean secondary sink x layer of its life (for the norm fits)
    clean_profile.parquet per (trace, layer): primary sink score, median token norm (compensation)
    effects.parquet/     one row per trace x target x condition x layer (columns: EFFECT_COLUMNS)
    downstream.parquet/  one row per trace x condition x group x position: KL and delta NLL
    summary.csv          the terminal summary table
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .compiler import Edit
from .detection import DetectionConfig, Sink, detect_sinks
from .errors import SpecError, UserError
from .execute import TraceExecutor
from .measures import next_token_divergence, per_layer, target_rows
from .progress import track, warn
from .store import (Manifest, check_output_dir, new_run_id, part_name, prepare_output_dir, write_parquet_atomic,
                    write_text_atomic)
from .targets import RunFacts, Target, resolve_targets, token_ids_for

EFFECT_COLUMNS = {
    "condition": "condition id, e.g. scale.mlp_output.l_start.x5",
    "kind": "zero | scale | mean_swap | attention_mask",
    "site": "mlp_output | attention_output | block_output (empty for attention_mask)",
    "intervened_layer": "first layer edited for this target",
    "intervened_layers": "every layer edited for this target, e.g. '4' or '5,6,7'",
    "factor": "scale factor (NaN for other kinds)",
    "redirect": "attention_mask: none | bos",
    "target_set": "name of the spec's target set",
    "is_control": "True for matched-control positions",
    "trace": "0-based trace index",
    "position": "token position of the target",
    "token": "decoded token",
    "token_id": "token id",
    "clean_kind": "primary | secondary | none in the clean run",
    "layer": "layer at which the per-layer measures are taken",
    "is_sink": "target is sink-aligned at this layer (detection rule)",
    "hidden_norm": "||h|| of the target at this layer",
    "hidden_cos": "cosine of h to the primary sink's h at this layer",
    "mlp_out_norm": "||MLP output|| of the target at this layer",
    "sink_score": "Eq. 1 sink score of the target (mean over heads) at this layer",
    "primary_sink_score": "sink score of the primary sink (position 0) at this layer",
    "l_start": "first sink layer of the target after the intervention (-1: not a sink)",
    "lifetime": "contiguous sink layers from l_start after the intervention (0: not a sink)",
    "ref_layer": "layer where ref_mlp_out_norm is read: the intervened layer, else the clean l_start",
    "ref_mlp_out_norm": "||MLP output|| at ref_layer after the intervention",
    "ref_sink_score": "sink score at ref_layer + 1, the first attention that sees an edit at ref_layer",
    "kl": "mean KL(clean || intervened) of next-token distributions at positions >= target",
    "delta_nll": "mean change in NLL of the actual next tokens at positions >= target",
    "suppressed": "target was a sink in the clean run and is none after the intervention",
    "masked": "attention_mask: this layer is one of the layers masked for this target",
}
"""Each measure also has a ``clean_`` twin (the same measure in the clean run)."""


@dataclass
class RunResult:
    """What a run produced; everything is also on disk under ``out``."""

    out: Path
    effects: pd.DataFrame
    summary: pd.DataFrame
    clean_sinks: pd.DataFrame
    manifest: dict
    stats: dict | None = None
    report: Path | None = None
    timings: dict = field(default_factory=dict)


def _decode(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def _spec_records(spec, truth_folder: str | None):
    """Trace records of a spec: its JSONL file, or the planted model's own traces."""
    from .traces import read_trace_records

    if spec.traces == "testbed":
        from .testbed.planted import load_truth, planted_traces

        texts = planted_traces(load_truth(truth_folder), n=spec.limit or 8, seed=spec.seed, gated=True)
        return [{"text": t} for t in texts]
    return read_trace_records(spec.traces, limit=spec.limit)


def prepare(spec, *, results_root: Path = Path("results"), run_dir: Path | None = None, overwrite: bool = False,
            resume: bool = False):
    """Every check that needs no weights: spec vs model config, traces, output folder.

    Returns (source, dims, records, out). Raises SpecError / UserError with one line per problem.
    """
    from .adapters import model_dims
    from .models import check_device, load_config, resolve_source
    from .spec import check_against_model

    check_device(spec.device, spec.dtype)
    source = resolve_source(spec.model, revision=getattr(spec, "revision", None))
    config = load_config(source, trust_remote_code=spec.trust_remote_code)
    dims = model_dims(config)
    problems = check_against_model(spec, dims)
    if problems:
        raise SpecError(problems)
    records = _spec_records(spec, source.path)
    out = run_dir if run_dir is not None else results_root / spec.name / new_run_id()
    if resume:
        if not (out / "manifest.json").exists():
            raise UserError(f"{out} has no manifest.json to resume from", field="resume")
        previous = Manifest.load(out / "manifest.json")
        if previous.get("spec_hash") != spec.spec_hash:
            raise UserError(f"{out} was made from a different spec (hash {previous.get('spec_hash')} vs "
                            f"{spec.spec_hash}); start a new run or pass --overwrite", field="resume")
    check_output_dir(out, overwrite=overwrite, resume=resume)
    return source, dims, records, out


def _needs_l_start(conditions) -> list[str]:
    return [c.id for c in conditions if isinstance(c.layer, str) and c.layer.startswith("l_start")]


def run_spec(spec, *, results_root: Path | str = "results", run_dir: Path | str | None = None,
             overwrite: bool = False, resume: bool = False, progress: bool = True, report: bool | None = None,
             reuse_prefix: bool = True, command: str = "interventions.run_spec(...)") -> RunResult:
    """Run every condition of ``spec`` (a :class:`~interventions.spec.Spec` or a YAML path).

    Example:
        >>> from interventions import run_spec
        >>> result = run_spec("specs/norm_scale.yaml")
        >>> result.summary
    """
    import torch

    from .models import load_model
    from .spec import load_spec
    from .traces import traces_from_records

    if not hasattr(spec, "spec_hash"):
        spec = load_spec(spec)
    run_dir = Path(run_dir) if run_dir is not None else None
    source, dims, records, out = prepare(spec, results_root=Path(results_root), run_dir=run_dir,
                                         overwrite=overwrite, resume=resume)
    conditions = spec.conditions()
    config = DetectionConfig(**spec.detection.model_dump())
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)

    t_load = time.perf_counter()
    loaded = load_model(spec.model, dtype=spec.dtype, device=spec.device, attn_implementation=spec.attn_implementation,
                        trust_remote_code=spec.trust_remote_code, revision=getattr(spec, "revision", None))
    traces = traces_from_records(records, loaded.tokenizer, max_tokens=spec.max_tokens,
                                 chat_template=spec.chat_template)
    from .detect import check_trace_lengths

    check_trace_lengths(traces, loaded)
    for name, target in spec.targets.items():  # a multi-token string fails now, not mid-run
        if getattr(target, "tokens", None):
            token_ids_for(loaded.tokenizer, target.tokens, field=f"targets.{name}.tokens")
    load_s = time.perf_counter() - t_load

    done: set[int] = set()
    if resume:
        done = set(Manifest.load(out / "manifest.json").get("traces_completed", []))
    prepare_output_dir(out, overwrite=overwrite, resume=resume)
    write_text_atomic(out / "spec.yaml", spec.raw_text or json.dumps(spec.model_dump(), indent=2))
    manifest = Manifest(out / "manifest.json", command=command, kind="run", run_id=out.name, seed=spec.seed,
                        spec_name=spec.name, spec_hash=spec.spec_hash, spec=json.loads(spec.canonical_json()),
                        model=loaded.describe(), detection=config.__dict__, conditions=[c.to_dict() for c in conditions],
                        traces_total=len(traces), reuse_prefix=reuse_prefix)
    manifest.data["traces_completed"] = sorted(done)
    manifest.data["timings"]["load_s"] = round(load_s, 3)
    manifest.save()
    for tr in traces:
        for w in tr.warnings:
            warn(w)

    condition_s: dict[str, float] = {c.id: 0.0 for c in conditions}
    try:
        # Phase 1: clean detection over all traces.
        t0 = time.perf_counter()
        from .observe import observe_tokens

        clean_sinks: dict[int, list[Sink]] = {}
        for tr in track(traces, description="clean pass", enabled=progress):
            obs = observe_tokens(loaded, tr.token_ids)
            clean_sinks[tr.index] = detect_sinks(obs, trace=tr.index, tokens=_decode(loaded.tokenizer, tr.token_ids),
                                                 config=config)
        all_sinks = [s for v in clean_sinks.values() for s in v]
        facts = RunFacts.from_sinks(all_sinks)
        needing = _needs_l_start(conditions)
        if needing and facts.modal_l_start is None:
            raise UserError(f"conditions {', '.join(needing)} use layer l_start, but the clean run found no secondary "
                            "sink to take it from; give an integer layer instead", field="interventions")
        manifest.data["timings"]["clean_pass_s"] = round(time.perf_counter() - t0, 3)
        manifest.update(run_facts={"modal_l_start": facts.modal_l_start,
                                   "sink_token_ids": sorted(facts.sink_token_ids)})
        write_text_atomic(out / "clean_sinks.jsonl", "".join(json.dumps(s.to_dict()) + "\n" for s in all_sinks))

        # Phase 2: conditions, trace by trace.
        n_targets = 0
        empty_sets: dict[str, int] = {}
        forwards = {"full": 0, "prefix": 0, "suffix": 0, "tokens": 0, "naive_tokens": 0}
        for tr in track(traces, description=f"{len(conditions)} conditions", enabled=progress):
            if tr.index in done:
                continue
            t_trace = time.perf_counter()
            rows, downstream, extra, n = _run_trace(loaded, tr, spec, conditions, config, facts, condition_s,
                                                    reuse_prefix, forwards)
            for name in extra["empty_sets"]:
                empty_sets[name] = empty_sets.get(name, 0) + 1
            n_targets += n
            write_parquet_atomic(out / "effects.parquet" / part_name(tr.index), pd.DataFrame(rows))
            write_parquet_atomic(out / "downstream.parquet" / part_name(tr.index), pd.DataFrame(downstream))
            write_parquet_atomic(out / "parts" / "sink_layers" / part_name(tr.index), extra["sink_layers"])
            write_parquet_atomic(out / "parts" / "clean_profile" / part_name(tr.index), extra["clean_profile"])
            manifest.data["timings"]["per_condition_s"] = {k: round(v, 4) for k, v in condition_s.items()}
            manifest.trace_done(tr.index, time.perf_counter() - t_trace)
        for name, count in empty_sets.items():
            warn(f"targets.{name} resolved to no position in {count} of {len(traces)} traces")
        manifest.data["empty_target_sets"] = empty_sets
        if n_targets == 0 and not done:
            raise UserError("every target set resolved to no position in every trace; check the targets "
                            "(e.g. no secondary sink was detected)", field="targets")
        forwards["naive_tokens"] += sum(tr.length for tr in traces)  # the clean forward
        forwards["reuse_ratio"] = round(forwards["tokens"] / max(forwards["naive_tokens"], 1), 4)
        manifest.data["forwards"] = forwards
    except BaseException as exc:
        manifest.finish("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                        error=f"{type(exc).__name__}: {exc}")
        raise

    effects = read_parts(out / "effects.parquet")
    write_parquet_atomic(out / "sink_layers.parquet", read_parts(out / "parts" / "sink_layers"))
    write_parquet_atomic(out / "clean_profile.parquet", read_parts(out / "parts" / "clean_profile"))
    summary = summarize(effects)
    write_text_atomic(out / "summary.csv", summary.to_csv(index=False))
    manifest.finish("complete")
    result = RunResult(out=out, effects=effects, summary=summary,
                       clean_sinks=pd.DataFrame([s.to_dict() for s in all_sinks]), manifest=manifest.data)
    if report if report is not None else spec.report:
        from .analysis import analyze_run

        result.stats, result.report = analyze_run(out, progress=progress)
    return result


def read_parts(folder: Path) -> pd.DataFrame:
    parts = sorted(folder.glob("part-*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _edits_for(condition, group: list[Target], vectors, L: int) -> tuple[list[Edit], dict[int, list[int]]]:
    """Edits of one condition for one group of targets, and the layers edited per position."""
    edits, layers_of = [], {}
    for t in group:
        if condition.kind == "attention_mask" and condition.layer == "sink_lifetime" and t.lifetime is None:
            continue  # not a sink: it has no lifetime to mask
        try:
            layers = condition.layers_for(l_start=t.l_start, lifetime=t.lifetime)
        except ValueError:
            continue  # l_start unresolvable for this target
        layers = [l for l in layers if 0 <= l < L]
        if not layers:
            continue
        layers_of[t.position] = layers
        for layer in layers:
            edits.append(Edit(
                condition.kind, layer, [t.position], site=condition.site, factor=condition.factor,
                vector=None if vectors is None else vectors[condition.site][layer],
                redirect_to=0 if condition.redirect == "bos" else None,
            ))
    return edits, layers_of


def _run_trace(loaded, tr, spec, conditions, config, facts, condition_s, reuse_prefix, forwards):
    from .kinds.mean_swap import site_means

    L = loaded.dims["layers"]
    ex = TraceExecutor(loaded, tr.token_ids, reuse_prefix=reuse_prefix)
    clean = ex.clean()
    tokens = _decode(loaded.tokenizer, tr.token_ids)
    sinks = detect_sinks(clean, trace=tr.index, tokens=tokens, config=config)
    sets = resolve_targets(spec.targets, trace=tr.index, token_ids=clean.token_ids, tokens=tokens, sinks=sinks,
                           facts=facts, tokenizer=loaded.tokenizer)
    clean_layers = per_layer(clean, config)
    swap_sites = sorted({c.site for c in conditions if c.kind == "mean_swap"})
    vectors = site_means(loaded, tr.token_ids, {s.position for s in sinks}, swap_sites) if swap_sites else None

    rows, downstream, n_targets = [], [], 0
    for condition in conditions:
        t_cond = time.perf_counter()
        groups = [(False, _unique([t for name in condition.targets for t in sets.get(name, [])]))]
        if condition.controls:
            groups.append((True, sets.get(condition.controls, [])))
        for is_control, group in groups:
            edits, layers_of = _edits_for(condition, group, vectors if condition.kind == "mean_swap" else None, L)
            if not edits:
                continue
            edited = ex.intervened(edits)
            edited_layers = per_layer(edited, config)
            kl, dnll = next_token_divergence(clean.logits, edited.logits, clean.token_ids)
            first = min(layers_of)
            downstream += [{"trace": tr.index, "condition": condition.id, "is_control": is_control, "position": p,
                            "kl": kl[p], "delta_nll": dnll[p]} for p in range(first, tr.length)]
            for t in group:
                if t.position not in layers_of:
                    continue
                n_targets += 1
                layers = layers_of[t.position]
                base = {
                    "condition": condition.id, "kind": condition.kind, "site": condition.site or "",
                    "intervened_layer": layers[0], "intervened_layers": ",".join(map(str, layers)),
                    "factor": float(condition.factor) if condition.factor is not None else float("nan"),
                    "redirect": condition.redirect or "", "target_set": t.target_set, "is_control": is_control,
                    "trace": tr.index, "position": t.position, "token": t.token, "token_id": t.token_id,
                    "clean_kind": t.clean_kind,
                }
                ref = layers[0] if condition.kind != "attention_mask" else None
                new = target_rows(clean=clean_layers, edited=edited_layers, kl=kl, delta_nll=dnll,
                                  position=t.position, ref_layer=ref, base=base)
                for row in new:
                    row["masked"] = condition.kind == "attention_mask" and row["layer"] in layers
                rows += new
        condition_s[condition.id] += time.perf_counter() - t_cond
    for k, v in ex.forwards.items():  # tokens: what ran; naive_tokens: one full forward per intervened pass
        forwards[k] += v
    extra = {"sink_layers": sink_layer_rows(clean, sinks, L), "clean_profile": clean_profile_rows(clean, tr.index),
             "empty_sets": [name for name, members in sets.items() if not members]}
    return rows, downstream, extra, n_targets


def _unique(targets: list[Target]) -> list[Target]:
    seen, out = set(), []
    for t in targets:
        if t.position not in seen:
            seen.add(t.position)
            out.append(t)
    return out


def sink_layer_rows(obs, sinks: list[Sink], n_layers: int) -> pd.DataFrame:
    """One row per clean secondary sink x layer of its life: inputs of the norm -> score/lifetime fits."""
    scores = obs.mean_sink_scores()
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        for layer in s.layers:
            rows.append({"trace": s.trace, "position": s.position, "token": s.token, "token_id": s.token_id,
                         "l_start": s.l_start, "lifetime": s.lifetime, "censored": s.censored, "layer": layer,
                         "mlp_out_norm": s.mlp_out_norm, "sink_score": float(scores[layer, s.position]),
                         "primary_sink_score": float(scores[layer, 0])})
    return pd.DataFrame(rows, columns=["trace", "position", "token", "token_id", "l_start", "lifetime", "censored",
                                       "layer", "mlp_out_norm", "sink_score", "primary_sink_score"])


def clean_profile_rows(obs, trace: int) -> pd.DataFrame:
    """Per layer of one clean trace: the primary sink's score and norm, the median token norm."""
    scores = obs.mean_sink_scores()
    norm = obs.profiles["hidden_norm"]
    return pd.DataFrame({"trace": trace, "layer": np.arange(scores.shape[0]), "primary_sink_score": scores[:, 0],
                         "primary_hidden_norm": norm[:, 0], "median_hidden_norm": np.median(norm, axis=1),
                         "primary_key_norm": obs.profiles["key_norm"][:, 0],
                         "median_key_norm": np.median(obs.profiles["key_norm"], axis=1),
                         "primary_value_norm": obs.profiles["value_norm"][:, 0],
                         "median_value_norm": np.median(obs.profiles["value_norm"], axis=1)})


def summarize(effects: pd.DataFrame) -> pd.DataFrame:
    """Per condition and group (targets / controls): the numbers the terminal table shows."""
    if effects.empty:
        return pd.DataFrame()
    per_target = effects.drop_duplicates(["condition", "is_control", "trace", "position"])
    grouped = per_target.groupby(["condition", "is_control"], sort=False)
    table = pd.DataFrame({
        "kind": grouped.kind.first(),
        "factor": grouped.factor.first(),
        "targets": grouped.size(),
        "sinks_clean": grouped.apply(lambda g: (g.clean_lifetime > 0).mean(), include_groups=False),
        "sinks_after": grouped.apply(lambda g: (g.lifetime > 0).mean(), include_groups=False),
        "mean_lifetime": grouped.lifetime.mean(),
        "mean_clean_lifetime": grouped.clean_lifetime.mean(),
        "mean_sink_score": grouped.ref_sink_score.mean(),
        "mean_kl": grouped.kl.mean(),
        "mean_delta_nll": grouped.delta_nll.mean(),
    }).reset_index()
    return table
