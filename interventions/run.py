"""The ``intervene run`` job: a spec's conditions against the clean model, measured per target.

Every check that needs no weights runs first (:func:`prepare`: spec vs config, tokenizer,
traces, memory estimate, output folder). Phase 1 observes every trace cleanly and detects its
sinks (run-level facts such as the model's usual ``l_start`` need all traces) and resolves every
target set; only then, with nothing left to refuse, does the run folder appear. Phase 2 goes
trace by trace: run each condition's edits (targets and controls in separate forwards, so a
control never sees a target's edit), measure, and write the trace's rows atomically, then mark
the trace done in the manifest. ``--resume`` reloads phase 1 (``clean_sinks.jsonl``) and skips
the traces done. Under torchrun, rank r runs the traces i with i % world_size == r and keeps
``manifest.rank-<r>.json``; rank 0 merges (see :mod:`interventions.distributed`).

Run folder ``results/<spec name>/<run id>/``::

    spec.yaml            the spec as written
    manifest.json        spec hash, model identity, versions, seed, timings per condition, traces done,
                         memory estimate, non-finite events
    manifest.rank-K.json progress of rank K (torchrun runs only)
    clean_sinks.jsonl    sinks of the clean run (as ``intervene detect`` writes them)
    sink_layers.parquet  one row per clean secondary sink x layer of its life (for the norm fits)
    sink_window.parquet  one row per clean secondary sink x attention layer after its l_start, alive or not
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
from .detect import decode_tokens
from .detection import DetectionConfig, Sink, detect_sinks
from .errors import UserError
from .execute import TraceExecutor, first_position
from .measures import first_non_finite, next_token_divergence, per_layer, target_rows
from .progress import compact_ranges, info, track, warn
from .store import (Manifest, check_output_dir, new_run_id, part_name, prepare_output_dir, read_parts,
                    write_parquet_atomic, write_text_atomic)
from .targets import RunFacts, Target, resolve_targets

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
    "non_finite": "the intervened forward produced NaN/inf where the clean one is finite (see manifest non_finite)",
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


@dataclass
class Prepared:
    """What :func:`prepare` checked and read, all without weights."""

    source: object
    config: object
    dims: dict
    tokenizer: object
    traces: list
    out: Path
    device: str
    memory: object


def prepare(spec, *, results_root: Path = Path("results"), run_dir: Path | None = None, overwrite: bool = False,
            resume: bool = False, force: bool = False, run_id: str | None = None, ranks=None) -> Prepared:
    """Every check that needs no weights: spec vs model config, tokenizer, traces, memory, output folder.

    Raises SpecError / UserError with one line per problem; nothing is written.
    """
    from .distributed import Ranks
    from .spec.load import check_inputs

    checked = check_inputs(spec, device=(ranks or Ranks()).device(spec.device), force=force)
    out = run_dir if run_dir is not None else results_root / spec.name / (run_id or new_run_id())
    if resume:
        if not (out / "manifest.json").exists():
            raise UserError(f"{out} has no manifest.json to resume from", field="resume")
        previous = Manifest.load(out / "manifest.json")
        if previous.get("spec_hash") != spec.spec_hash:
            raise UserError(f"{out} was made from a different spec (hash {previous.get('spec_hash')} vs "
                            f"{spec.spec_hash}); start a new run, or replace it with --out {out} --overwrite",
                            field="resume")
    check_output_dir(out, overwrite=overwrite, resume=resume,
                     option="--out" if run_dir is not None else "--results")
    return Prepared(checked.source, checked.config, checked.dims, checked.tokenizer, checked.traces, out,
                    checked.device, checked.memory)


def _needs_l_start(conditions) -> list[str]:
    return [c.id for c in conditions if isinstance(c.layer, str) and c.layer.startswith("l_start")]


def completed_traces(out: Path) -> set[int]:
    """Traces whose results are on disk: the run manifest's list and every rank's (``manifest.rank-K.json``)."""
    done: set[int] = set()
    for path in [out / "manifest.json", *sorted(out.glob("manifest.rank-*.json"))]:
        if path.exists():
            done |= set(Manifest.load(path).get("traces_completed", []))
    return done


def _load_clean_sinks(out: Path) -> dict[int, list[Sink]] | None:
    """Phase 1 of an interrupted run (``clean_sinks.jsonl`` is written whole, after the clean pass)."""
    path = out / "clean_sinks.jsonl"
    if not path.exists():
        return None
    sinks: dict[int, list[Sink]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            s = Sink(**json.loads(line))
            sinks.setdefault(s.trace, []).append(s)
    return sinks


def run_spec(spec, *, results_root: Path | str = "results", run_dir: Path | str | None = None,
             overwrite: bool = False, resume: bool = False, progress: bool = True, report: bool | None = None,
             reuse_prefix: bool = True, force: bool = False, command: str = "interventions.run_spec(...)") -> RunResult:
    """Run every condition of ``spec`` (a :class:`~interventions.spec.Spec` or a YAML path).

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process runs the traces ``i`` with
    ``i % WORLD_SIZE == RANK`` into the same run folder, and rank 0 merges (see
    :mod:`interventions.distributed`). ``force`` skips the memory check.

    Example:
        >>> from interventions import run_spec
        >>> result = run_spec("specs/norm_scale.yaml")
        >>> result.summary
    """
    import torch

    from .distributed import ranks_from_env
    from .models import load_model
    from .observe import observe_tokens
    from .spec import load_spec

    if not hasattr(spec, "spec_hash"):
        spec = load_spec(spec)
    ranks = ranks_from_env().start()
    if ranks.active and spec.uses_testbed:  # rank 0 builds a testbed model once; the others then read it
        from .models import resolve_source

        ranks.agree(lambda: resolve_source(spec.model) if ranks.is_main else None)
    run_dir = Path(run_dir) if run_dir is not None else None
    run_id = ranks.broadcast(new_run_id())  # one run folder for every rank
    prep = ranks.agree(lambda: prepare(spec, results_root=Path(results_root), run_dir=run_dir, overwrite=overwrite,
                                       resume=resume, force=force, run_id=run_id, ranks=ranks))
    out, traces = prep.out, prep.traces
    progress = progress and ranks.is_main
    conditions = spec.conditions()
    config = DetectionConfig(**spec.detection.model_dump())
    torch.manual_seed(spec.seed)
    np.random.seed(spec.seed)

    t_load = time.perf_counter()
    loaded = load_model(spec.model, dtype=spec.dtype, device=prep.device, attn_implementation=spec.attn_implementation,
                        trust_remote_code=spec.trust_remote_code, revision=getattr(spec, "revision", None),
                        tokenizer=prep.tokenizer)
    load_s = time.perf_counter() - t_load
    if ranks.is_main:
        for tr in traces:
            for w in tr.warnings:
                warn(w)

    # Phase 1: clean detection over all traces (each rank observes its share), or the interrupted run's.
    t0 = time.perf_counter()
    tokens = {tr.index: decode_tokens(loaded.tokenizer, tr.token_ids) for tr in traces}
    clean_sinks = _load_clean_sinks(out) if resume else None
    reused_clean = clean_sinks is not None
    if clean_sinks is None:
        local: dict[int, list[Sink]] = {}
        for tr in track([tr for tr in traces if ranks.owns(tr.index)], description="clean pass", enabled=progress):
            obs = observe_tokens(loaded, tr.token_ids)
            local[tr.index] = detect_sinks(obs, trace=tr.index, tokens=tokens[tr.index], config=config)
        clean_sinks = {i: s for part in ranks.gather(local) for i, s in part.items()}
    clean_pass_s = time.perf_counter() - t0
    all_sinks = [s for i in sorted(clean_sinks) for s in clean_sinks[i]]
    facts = RunFacts.from_sinks(all_sinks)
    needing = _needs_l_start(conditions)
    if needing and facts.modal_l_start is None:
        raise UserError(f"conditions {', '.join(needing)} use layer l_start, but the clean run found no secondary "
                        "sink to take it from; give an integer layer instead", field="interventions")
    sets = {tr.index: resolve_targets(spec.targets, trace=tr.index, token_ids=np.asarray(tr.token_ids),
                                      tokens=tokens[tr.index], sinks=clean_sinks.get(tr.index, []), facts=facts,
                                      tokenizer=loaded.tokenizer) for tr in traces}
    if not any(_edits_for(c, group, None, prep.dims["layers"])[0]
               for s in sets.values() for c in conditions for _, group in _groups(c, s)):
        raise UserError("every target set resolved to no position in every trace; check the targets "
                        "(e.g. no secondary sink was detected)", field="targets")
    skipped: dict[str, dict[str, int]] = {}
    for s in sets.values():
        for c in conditions:
            for _, group in _groups(c, s):
                _edits_for(c, group, None, prep.dims["layers"], skipped=skipped.setdefault(c.id, {}))
    skipped = {cid: reasons for cid, reasons in skipped.items() if reasons}
    if ranks.is_main:
        for cid, reasons in skipped.items():
            warn(f"{cid}: " + "; ".join(f"{n} target(s) skipped: {why}" for why, n in reasons.items()))
    empty_sets: dict[str, int] = {}
    for s in sets.values():
        for name, members in s.items():
            if not members:
                empty_sets[name] = empty_sets.get(name, 0) + 1
    if ranks.is_main:
        for name, count in empty_sets.items():
            warn(f"targets.{name} resolved to no position in {count} of {len(traces)} traces")

    # Only now, with every check passed, does the run folder appear.
    done = completed_traces(out) if resume else set()
    if resume and ranks.is_main:
        info(f"resuming {out}: clean pass {'reused from clean_sinks.jsonl' if reused_clean else 'rerun'}; "
             f"skipping {len(done)} of {len(traces)} traces already done"
             + (f" ({compact_ranges(done)})" if done else "") + f"; running {len(traces) - len(done)}")
    previous = Manifest.load(out / "manifest.json") if resume else {}
    manifest = Manifest(out / "manifest.json", command=command, kind="run", run_id=out.name, seed=spec.seed,
                        spec_name=spec.name, spec_hash=spec.spec_hash, spec=json.loads(spec.canonical_json()),
                        model=loaded.describe(), detection=config.__dict__, conditions=[c.to_dict() for c in conditions],
                        traces_total=len(traces), reuse_prefix=reuse_prefix, world_size=ranks.world_size,
                        memory_estimate={**prep.memory.parts, "total": prep.memory.total_bytes},
                        resumes=previous.get("resumes", 0) + bool(resume), empty_target_sets=empty_sets,
                        skipped_targets=skipped,
                        run_facts={"modal_l_start": facts.modal_l_start,
                                   "sink_token_ids": sorted(facts.sink_token_ids)})
    manifest.data["traces_completed"] = sorted(done)
    manifest.data["timings"].update(load_s=round(load_s, 3), clean_pass_s=round(clean_pass_s, 3),
                                    per_trace_s=previous.get("timings", {}).get("per_trace_s", {}))
    if ranks.is_main:
        prepare_output_dir(out, overwrite=overwrite, resume=resume)
        write_text_atomic(out / "spec.yaml", spec.raw_text or json.dumps(spec.model_dump(), indent=2))
        write_text_atomic(out / "clean_sinks.jsonl", "".join(json.dumps(s.to_dict()) + "\n" for s in all_sinks))
        manifest.save()
    ranks.barrier()
    # Progress: each rank keeps its own manifest; one process writes manifest.json directly.
    shard = manifest if not ranks.active else Manifest(
        out / f"manifest.rank-{ranks.rank}.json", command=command, kind="run-shard", run_id=out.name,
        rank=ranks.rank, world_size=ranks.world_size, spec_hash=spec.spec_hash)

    condition_s: dict[str, float] = {c.id: 0.0 for c in conditions}
    forwards = {"full": 0, "prefix": 0, "suffix": 0, "tokens": 0, "naive_tokens": 0}
    non_finite: list[dict] = []
    try:
        # Phase 2: conditions, trace by trace.
        mine = [tr for tr in traces if ranks.owns(tr.index) and tr.index not in done]
        for tr in track(mine, description=f"{len(conditions)} conditions", enabled=progress):
            t_trace = time.perf_counter()
            rows, downstream, extra = _run_trace(loaded, tr, conditions, config, clean_sinks.get(tr.index, []),
                                                 sets[tr.index], condition_s, reuse_prefix, forwards, non_finite)
            write_parquet_atomic(out / "effects.parquet" / part_name(tr.index), pd.DataFrame(rows))
            write_parquet_atomic(out / "downstream.parquet" / part_name(tr.index), pd.DataFrame(downstream))
            write_parquet_atomic(out / "parts" / "sink_layers" / part_name(tr.index), extra["sink_layers"])
            write_parquet_atomic(out / "parts" / "clean_profile" / part_name(tr.index), extra["clean_profile"])
            write_parquet_atomic(out / "parts" / "sink_window" / part_name(tr.index), extra["sink_window"])
            shard.data["timings"]["per_condition_s"] = {k: round(v, 4) for k, v in condition_s.items()}
            shard.data["forwards"], shard.data["non_finite"] = dict(forwards), list(non_finite)
            shard.trace_done(tr.index, time.perf_counter() - t_trace)
        shard.data["forwards"], shard.data["non_finite"] = dict(forwards), list(non_finite)
        if shard is not manifest:
            shard.finish("complete")
        ranks.barrier()  # rank 0 merges once every rank's parts are on disk
        if ranks.active and ranks.is_main:
            _merge_shards(manifest, out, ranks.world_size, done)
        manifest.data["forwards"] = _forward_totals(manifest.data.get("forwards", forwards), traces)
    except BaseException as exc:
        (shard if ranks.active else manifest).finish(
            "failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted", error=f"{type(exc).__name__}: {exc}")
        raise

    clean_frame = pd.DataFrame([s.to_dict() for s in all_sinks])
    if not ranks.is_main:  # rank 0 writes the merged tables, statistics and report
        ranks.close()
        return RunResult(out=out, effects=pd.DataFrame(), summary=pd.DataFrame(), clean_sinks=clean_frame,
                         manifest=shard.data)
    effects = read_parts(out / "effects.parquet")
    write_parquet_atomic(out / "sink_layers.parquet", read_parts(out / "parts" / "sink_layers"))
    write_parquet_atomic(out / "clean_profile.parquet", read_parts(out / "parts" / "clean_profile"))
    write_parquet_atomic(out / "sink_window.parquet", read_parts(out / "parts" / "sink_window"))
    summary = summarize(effects)
    write_text_atomic(out / "summary.csv", summary.to_csv(index=False))
    ranks.close()
    result = RunResult(out=out, effects=effects, summary=summary, clean_sinks=clean_frame, manifest=manifest.data)
    if report if report is not None else spec.report:
        # "complete" means every file the run promises is written: a run killed during its
        # statistics stays "analyzing" (resume it, or run `intervene report` on it).
        from .analysis import analyze_run

        manifest.update(status="analyzing")
        try:
            result.stats, result.report = analyze_run(out, progress=progress)
        except BaseException as exc:
            manifest.finish("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted",
                            error=f"statistics: {type(exc).__name__}: {exc}")
            raise
    manifest.finish("complete")
    return result


def _merge_shards(manifest: Manifest, out: Path, world_size: int, done: set[int]) -> None:
    """Rank 0: fold every rank's manifest (traces done, timings, forwards, warnings) into manifest.json."""
    completed, per_trace, per_condition = set(done), dict(manifest.data["timings"].get("per_trace_s", {})), {}
    forwards: dict[str, float] = {}
    non_finite: list[dict] = []
    for rank in range(world_size):
        data = Manifest.load(out / f"manifest.rank-{rank}.json")
        completed |= set(data.get("traces_completed", []))
        per_trace.update(data["timings"].get("per_trace_s", {}))
        for k, v in data["timings"].get("per_condition_s", {}).items():
            per_condition[k] = round(per_condition.get(k, 0.0) + v, 4)
        for k, v in data.get("forwards", {}).items():
            forwards[k] = forwards.get(k, 0) + v
        non_finite += data.get("non_finite", [])
    manifest.data["traces_completed"] = sorted(completed)
    manifest.data["timings"].update(per_trace_s=per_trace, per_condition_s=per_condition)
    manifest.data["forwards"] = forwards
    manifest.data["non_finite"] = sorted(non_finite, key=lambda e: (e["trace"], e["condition"], e["is_control"]))
    manifest.save()


def _forward_totals(forwards: dict, traces) -> dict:
    out = dict(forwards)
    out["naive_tokens"] = out.get("naive_tokens", 0) + sum(tr.length for tr in traces)  # the clean forward
    out["reuse_ratio"] = round(out.get("tokens", 0) / max(out["naive_tokens"], 1), 4)
    return out


def _groups(condition, sets: dict[str, list[Target]]) -> list[tuple[bool, list[Target]]]:
    """(is_control, targets) groups of one condition in one trace: targets, then its controls."""
    groups = [(False, _unique([t for name in condition.targets for t in sets.get(name, [])]))]
    if condition.controls:
        groups.append((True, sets.get(condition.controls, [])))
    return groups


def _edits_for(condition, group: list[Target], vectors, L: int, skipped: dict[str, int] | None = None
               ) -> tuple[list[Edit], dict[int, list[int]]]:
    """Edits of one condition for one group of targets, and the layers edited per position.

    A target with nothing to edit is skipped; ``skipped`` (when given) counts them by reason.
    """
    edits, layers_of = [], {}

    def skip(reason: str) -> None:
        if skipped is not None:
            skipped[reason] = skipped.get(reason, 0) + 1

    for t in group:
        if condition.kind == "attention_mask" and condition.layer == "sink_lifetime" and t.ref_lifetime is None:
            skip("neither a sink nor paired with one, so no lifetime to mask")
            continue
        try:
            layers = condition.layers_for(l_start=t.l_start, lifetime=t.ref_lifetime)
        except ValueError as exc:
            skip(f"layer not resolvable ({exc})")
            continue
        layers = [l for l in layers if 0 <= l < L]
        if not layers:
            skip(f"every layer outside 0..{L - 1}")
            continue
        layers_of[t.position] = layers
        for layer in layers:
            edits.append(Edit(
                condition.kind, layer, [t.position], site=condition.site, factor=condition.factor,
                vector=None if vectors is None else vectors[condition.site][layer],
                redirect_to=0 if condition.redirect == "bos" else None,
            ))
    return edits, layers_of


def _run_trace(loaded, tr, conditions, config, sinks, sets, condition_s, reuse_prefix, forwards, non_finite):
    """Every condition on one trace, its targets resolved from the clean pass (``sinks``, ``sets``)."""
    from .kinds.mean_swap import site_means

    L = loaded.dims["layers"]
    swap_sites = sorted({c.site for c in conditions if c.kind == "mean_swap"})
    vectors = site_means(loaded, tr.token_ids, {s.position for s in sinks}, swap_sites) if swap_sites else None
    planned = []
    for condition in conditions:
        for is_control, group in _groups(condition, sets):
            edits, layers_of = _edits_for(condition, group, vectors if condition.kind == "mean_swap" else None, L)
            if edits:
                planned.append((condition, is_control, group, edits, layers_of))
    # The clean forward also serves as the prefix of every intervened forward (see execute.py).
    ex = TraceExecutor(loaded, tr.token_ids, reuse_prefix=reuse_prefix,
                       starts=[first_position(p[3]) for p in planned])
    clean = ex.clean()
    clean_layers = per_layer(clean, config)

    rows, downstream = [], []
    for condition, is_control, group, edits, layers_of in planned:
        t_cond = time.perf_counter()
        edited = ex.intervened(edits)
        bad = first_non_finite(edited, clean)
        if bad is not None:
            event = {"trace": tr.index, "condition": condition.id, "is_control": is_control, **bad}
            non_finite.append(event)
            warn(f"trace {tr.index}, {condition.id} ({'controls' if is_control else 'targets'}): non-finite "
                 f"{bad['quantity']} ({bad['value']}) from layer {bad['layer']}, position {bad['position']}; "
                 "its rows are kept and marked non_finite")
        edited_layers = per_layer(edited, config)
        kl, dnll = next_token_divergence(clean.logits, edited.logits, clean.token_ids)
        first = min(layers_of)
        downstream += [{"trace": tr.index, "condition": condition.id, "is_control": is_control, "position": p,
                        "kl": kl[p], "delta_nll": dnll[p], "non_finite": bad is not None}
                       for p in range(first, tr.length)]
        for t in group:
            if t.position not in layers_of:
                continue
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
                row["non_finite"] = bad is not None
            rows += new
        condition_s[condition.id] += time.perf_counter() - t_cond
    for k, v in ex.forwards.items():  # tokens: what ran; naive_tokens: one full forward per intervened pass
        forwards[k] += v
    extra = {"sink_layers": sink_layer_rows(clean, sinks, L), "clean_profile": clean_profile_rows(clean, tr.index, sinks),
             "sink_window": sink_window_rows(clean, sinks, L)}
    return rows, downstream, extra


def _unique(targets: list[Target]) -> list[Target]:
    seen, out = set(), []
    for t in targets:
        if t.position not in seen:
            seen.add(t.position)
            out.append(t)
    return out


def sink_layer_rows(obs, sinks: list[Sink], n_layers: int) -> pd.DataFrame:
    """One row per clean secondary sink x attention layer that sees it: the norm -> score fit's input.

    A sink-aligned hidden state at layer l (the output of layer l) becomes a key in the attention
    of layer l + 1, so a sink living on layers [l_start, l_start + lifetime) is attended to as a
    sink in layers l_start + 1 .. l_start + lifetime; ``layer`` is that attention layer.
    """
    scores = obs.mean_sink_scores()
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        for layer in (l + 1 for l in s.layers if l + 1 < n_layers):
            rows.append({"trace": s.trace, "position": s.position, "token": s.token, "token_id": s.token_id,
                         "l_start": s.l_start, "lifetime": s.lifetime, "censored": s.censored, "layer": layer,
                         "mlp_out_norm": s.mlp_out_norm, "sink_score": float(scores[layer, s.position]),
                         "primary_sink_score": float(scores[layer, 0])})
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
    rows = []
    for s in sinks:
        if s.kind != "secondary":
            continue
        lived = set(s.layers)
        for layer in range(s.l_start + 1, n_layers):
            rows.append({"trace": s.trace, "position": s.position, "token": s.token, "l_start": s.l_start,
                         "lifetime": s.lifetime, "censored": s.censored, "layer": layer, "alive": (layer - 1) in lived,
                         "mlp_out_norm": s.mlp_out_norm, "sink_score": float(scores[layer, s.position]),
                         "primary_sink_score": float(scores[layer, 0])})
    return pd.DataFrame(rows, columns=SINK_WINDOW_COLUMNS)


def clean_profile_rows(obs, trace: int, sinks: list[Sink] = ()) -> pd.DataFrame:
    """Per layer of one clean trace: the primary sink's score and norms, the median token's norms, and
    the mean norms over the trace's clean secondary sinks (NaN when it has none; paper Fig. 1)."""
    scores = obs.mean_sink_scores()
    norm = obs.profiles["hidden_norm"]
    secondary = [s.position for s in sinks if s.kind == "secondary"]
    out = pd.DataFrame({"trace": trace, "layer": np.arange(scores.shape[0]), "primary_sink_score": scores[:, 0],
                        "primary_hidden_norm": norm[:, 0], "median_hidden_norm": np.median(norm, axis=1),
                        "primary_key_norm": obs.profiles["key_norm"][:, 0],
                        "median_key_norm": np.median(obs.profiles["key_norm"], axis=1),
                        "primary_value_norm": obs.profiles["value_norm"][:, 0],
                        "median_value_norm": np.median(obs.profiles["value_norm"], axis=1),
                        "n_secondary": len(secondary)})
    for what in ("hidden", "key", "value"):
        values = np.asarray(obs.profiles[f"{what}_norm"] if what != "hidden" else norm, dtype=float)
        out[f"secondary_{what}_norm"] = values[:, secondary].mean(axis=1) if secondary else np.nan
    return out


def summarize(effects: pd.DataFrame) -> pd.DataFrame:
    """Per condition and group (targets / controls): the numbers the terminal table shows."""
    if effects.empty:
        return pd.DataFrame()
    per_target = effects.drop_duplicates(["condition", "is_control", "trace", "position"])
    if "non_finite" not in per_target:
        per_target = per_target.assign(non_finite=False)
    # An overflowing condition keeps its rows (marked non_finite); its inf values do not enter the means.
    means = ["ref_sink_score", "kl", "delta_nll"]
    per_target = per_target.assign(**{c: per_target[c].replace([np.inf, -np.inf], np.nan) for c in means})
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
        "non_finite": grouped.non_finite.sum().astype(int),
    }).reset_index()
    return table
