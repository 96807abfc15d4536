"""The ``intervene run`` job: a spec's conditions against the clean model, measured per target.

Every check that needs no weights runs first (:func:`prepare`: spec vs config, tokenizer,
traces, memory estimate, output folder). Phase 1 observes every trace cleanly and detects its
sinks (run-level facts such as the model's usual ``l_start`` need all traces) and resolves every
target set; only then, with nothing left to refuse, does the run folder appear. Phase 2 goes
trace by trace: run each condition's edits (targets and controls in separate forwards, so a
control never sees a target's edit), measure, and write the trace's rows atomically, then mark
the trace done in the manifest. ``--resume`` reloads phase 1 (``clean_sinks.jsonl``) and skips
the traces done. Under torchrun, rank r runs the traces i with i % world_size == r and keeps
``manifest.rank-<r>.json``; rank 0 merges (see :mod:`interventions.run.distributed`).

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

from interventions.compile.expand import groups, skip_reason, skipped_targets
from interventions.compile.targets import RunFacts, resolve_targets
from interventions.detection.job import decode_tokens
from interventions.detection.rules import DetectionConfig, Sink, detect_sinks
from interventions.errors import UserError
from interventions.interrupts import mark_interrupted
from interventions.progress import compact_ranges, info, track, warn
from interventions.spec.measures import statistics_measures
from interventions.store import (
    Manifest,
    check_output_dir,
    new_run_id,
    part_name,
    prepare_output_dir,
    write_parquet_atomic,
    write_text_atomic,
)

from .tables import EFFECT_COLUMNS, read_parts, summarize  # noqa: F401 - EFFECT_COLUMNS re-exported
from .trace import run_trace


@dataclass
class RunResult:
    """What a run produced; with a run folder, everything is also on disk under ``out``."""

    out: Path | None
    """The run folder, or None for an in-memory run."""
    effects: pd.DataFrame
    """One row per trace x target x condition x layer (columns: :data:`EFFECT_COLUMNS`)."""
    summary: pd.DataFrame
    """Per condition and group (targets / controls): the terminal table."""
    clean_sinks: pd.DataFrame
    """Sinks of the clean run, one row per sink."""
    manifest: dict
    """Spec, model, versions, seed, timings, traces done."""
    stats: dict | None = None
    """``stats.json``: fits, effects and verdicts (None when statistics were not run)."""
    report: Path | None = None
    """The Markdown report, when one was written."""
    timings: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        lines = [f"RunResult({self.manifest.get('spec_name', '?')}, run {self.manifest.get('run_id', '?')}, "
                 f"{self.manifest.get('status', '?')}; {'in memory' if self.out is None else self.out})"]
        n_sec = int((self.clean_sinks["kind"] == "secondary").sum()) if "kind" in self.clean_sinks else 0
        lines.append(f"  traces {self.manifest.get('traces_total', '?')}, clean secondary sinks {n_sec}, "
                     f"effects rows {len(self.effects)}")
        if len(self.summary):
            for _, r in self.summary.head(12).iterrows():
                group = "controls" if r["is_control"] else "targets"
                group = f"{group} {r.get('target_set', '')}".strip()
                lines.append(f"  {r['condition']:<44} {group:<16} n={int(r['targets']):<4} "
                             f"sinks {r['sinks_clean']:.2f} -> {r['sinks_after']:.2f}  KL {r['mean_kl']:.3g}")
            if len(self.summary) > 12:
                lines.append(f"  ... {len(self.summary) - 12} more rows in .summary")
        for key, v in (self.stats or {}).get("verdicts", {}).items():
            lines.append(f"  {key}: {v.get('verdict', '?')}")
        return "\n".join(lines)


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
    from interventions.spec.load import check_inputs

    from .distributed import Ranks

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


def run_spec(spec, *, results_root: Path | str | None = None, run_dir: Path | str | None = None,
             overwrite: bool = False, resume: bool = False, progress: bool = True, report: bool | None = None,
             reuse_prefix: bool = True, force: bool = False, command: str = "interventions.run_spec(...)",
             analyze=None) -> RunResult:
    """Run every condition of ``spec`` (a :class:`~interventions.spec.Spec` or a YAML path).

    In memory unless given a folder: without ``results_root`` or ``run_dir`` the run works in a
    temporary folder that is removed when it is done, and :class:`RunResult` holds the tables
    (``out`` is None, no report file). With ``results_root`` the run goes to
    ``results_root/<spec name>/<run id>/``; with ``run_dir`` exactly there (``resume`` needs one).

    Nothing global changes: no global torch/numpy seed is set (every random draw, such as
    matched controls, uses its own seeded generator), and the model's attention wrapper is
    removed again when the run ends.

    ``analyze(out, progress=, report=) -> (stats, report_path)`` writes the statistics at the end
    (the run stays ``analyzing`` until it returns); :func:`interventions.pipeline.run_spec` passes
    :func:`interventions.pipeline.analyze_run`. Without it no statistics are written.

    Under ``torchrun`` (``RANK``/``WORLD_SIZE`` set) each process runs the traces ``i`` with
    ``i % WORLD_SIZE == RANK`` into the same run folder, and rank 0 merges (see
    :mod:`interventions.run.distributed`). ``force`` skips the memory check.

    Example:
        >>> from interventions import run_spec   # this function with the statistics stage attached
        >>> result = run_spec("specs/norm_scale.yaml")                      # in memory
    """
    if results_root is not None or run_dir is not None:
        return _run(spec, results_root=Path(results_root if results_root is not None else "results"),
                    run_dir=run_dir, overwrite=overwrite, resume=resume, progress=progress, report=report,
                    reuse_prefix=reuse_prefix, force=force, command=command, analyze=analyze)
    if resume:
        raise UserError("resume needs the folder of the run to resume: pass run_dir=", field="resume")
    import shutil
    import tempfile

    scratch = Path(tempfile.mkdtemp(prefix="interventions-run-"))
    try:
        result = _run(spec, results_root=scratch, run_dir=scratch / "run", overwrite=False, resume=False,
                      progress=progress, report=report, reuse_prefix=reuse_prefix, force=force, command=command,
                      write_report=False, analyze=analyze)
        result.out, result.report = None, None
        return result
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run(spec, *, results_root: Path, run_dir: Path | str | None, overwrite: bool, resume: bool, progress: bool,
         report: bool | None, reuse_prefix: bool, force: bool, command: str, write_report: bool = True,
         analyze=None) -> RunResult:
    from interventions.spec import load_spec

    from .distributed import ranks_from_env

    spec = spec if hasattr(spec, "spec_hash") else load_spec(spec)
    ranks = ranks_from_env().start()
    prep = _prepare_on_every_rank(spec, ranks, results_root=results_root, run_dir=run_dir, overwrite=overwrite,
                                  resume=resume, force=force)
    out, traces = prep.out, prep.traces
    progress = progress and ranks.is_main
    conditions = spec.conditions()
    config = DetectionConfig(**spec.detection.model_dump())
    loaded, load_s = _load_model(spec, prep, ranks)
    clean = _clean_pass(spec, loaded, traces, config, out=out, resume=resume, ranks=ranks, progress=progress)
    targets = _resolve_run_targets(spec, conditions, traces, clean, loaded, prep, ranks)

    # Only now, with every check passed, does the run folder appear.
    done = completed_traces(out) if resume else set()
    if resume and ranks.is_main:
        info(f"resuming {out}: clean pass {'reused from clean_sinks.jsonl' if clean.reused else 'rerun'}; "
             f"skipping {len(done)} of {len(traces)} traces already done"
             + (f" ({compact_ranges(done)})" if done else "") + f"; running {len(traces) - len(done)}")
    manifest = _new_manifest(spec, prep, loaded, config, conditions, clean, targets, done=done, resume=resume,
                             reuse_prefix=reuse_prefix, ranks=ranks, command=command, load_s=load_s)
    # From here on the folder exists: every way out, Ctrl-C included, leaves its manifest saying how
    # the run ended and in which phase (conditions, merging, statistics), never "running".
    if ranks.is_main:
        prepare_output_dir(out, overwrite=overwrite, resume=resume)
    phase = ["writing the clean pass"]  # the phase in progress is phase[-1]
    shard = manifest
    try:
        if ranks.is_main:
            manifest.save()
            write_text_atomic(out / "spec.yaml", spec.raw_text or json.dumps(spec.model_dump(), indent=2))
            write_text_atomic(out / "clean_sinks.jsonl",
                              "".join(json.dumps(s.to_dict()) + "\n" for s in clean.all_sinks))
        ranks.barrier()
        # Progress: each rank keeps its own manifest; one process writes manifest.json directly.
        shard = manifest if not ranks.active else Manifest(
            out / f"manifest.rank-{ranks.rank}.json", command=command, kind="run-shard", run_id=out.name,
            rank=ranks.rank, world_size=ranks.world_size, spec_hash=spec.spec_hash)
        return _run_conditions(spec, out, loaded, traces, conditions, config, clean.sinks, clean.all_sinks,
                               targets.sets, done, manifest, shard, ranks, progress, report, reuse_prefix,
                               write_report, phase, analyze)
    except BaseException as exc:
        # a rank's own shard while the conditions run; the run's manifest before and after
        record = shard if ranks.active and phase[-1] == "conditions" else manifest
        if ranks.is_main or record is shard:
            record.finish("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed", phase=phase[-1],
                          error=f"{type(exc).__name__}: {exc}")
        mark_interrupted(exc, out, phase[-1])
        raise


def _prepare_on_every_rank(spec, ranks, *, results_root, run_dir, overwrite, resume, force) -> Prepared:
    """Every check that needs no weights, agreed by all ranks (one run folder, one testbed build)."""
    if ranks.active and spec.uses_testbed:  # rank 0 builds a testbed model once; the others then read it
        from interventions.models.load import resolve_source

        ranks.agree(lambda: resolve_source(spec.model) if ranks.is_main else None)
    run_dir = Path(run_dir) if run_dir is not None else None
    run_id = ranks.broadcast(new_run_id())  # one run folder for every rank
    return ranks.agree(lambda: prepare(spec, results_root=Path(results_root), run_dir=run_dir, overwrite=overwrite,
                                       resume=resume, force=force, run_id=run_id, ranks=ranks))


def _load_model(spec, prep: Prepared, ranks):
    """The weights (timed), and each trace's tokenization warnings said once."""
    from interventions.models.load import load_model

    t_load = time.perf_counter()
    loaded = load_model(spec.model, dtype=spec.dtype, device=prep.device, attn_implementation=spec.attn_implementation,
                        trust_remote_code=spec.trust_remote_code, revision=getattr(spec, "revision", None),
                        tokenizer=prep.tokenizer)
    load_s = time.perf_counter() - t_load
    if ranks.is_main:
        for tr in prep.traces:
            for w in tr.warnings:
                warn(w)
    return loaded, load_s


@dataclass
class CleanPass:
    """The clean model's sinks in every trace, and what target selection needs from the clean forwards."""

    sinks: dict[int, list[Sink]]
    """Trace index -> its sinks."""
    tokens: dict[int, list[str]]
    key_scores: dict[int, np.ndarray]
    """Trace index -> every key's clean sink score per layer (only when a target set matches on attention mass)."""
    reused: bool
    """Read back from an interrupted run's ``clean_sinks.jsonl`` rather than observed again."""
    seconds: float

    @property
    def all_sinks(self) -> list[Sink]:
        return [s for i in sorted(self.sinks) for s in self.sinks[i]]


def _clean_pass(spec, loaded, traces, config, *, out, resume, ranks, progress) -> CleanPass:
    """Clean detection over all traces (each rank observes its share), or the interrupted run's."""
    from interventions.observation import observe_tokens

    t0 = time.perf_counter()
    tokens = {tr.index: decode_tokens(loaded.tokenizer, tr.token_ids) for tr in traces}
    # Controls matched on attention mass need every key's clean score, which clean_sinks.jsonl does not keep.
    needs_scores = any(getattr(t, "by", None) == "attention_mass" for t in spec.targets.values())
    clean_sinks = _load_clean_sinks(out) if resume and not needs_scores else None
    reused = clean_sinks is not None
    key_scores: dict[int, np.ndarray] = {}
    if clean_sinks is None:
        local: dict[int, tuple] = {}
        for tr in track([tr for tr in traces if ranks.owns(tr.index)], description="clean pass", enabled=progress):
            obs = observe_tokens(loaded, tr.token_ids, reference=config.reference, massive_ratio=config.massive_ratio)
            local[tr.index] = (detect_sinks(obs, trace=tr.index, tokens=tokens[tr.index], config=config,
                                            chat_template=spec.chat_template),
                               obs.mean_sink_scores() if needs_scores else None)
        gathered = {i: v for part in ranks.gather(local) for i, v in part.items()}
        clean_sinks = {i: v[0] for i, v in gathered.items()}
        key_scores = {i: v[1] for i, v in gathered.items() if v[1] is not None}
    return CleanPass(clean_sinks, tokens, key_scores, reused, time.perf_counter() - t0)


@dataclass
class RunTargets:
    """Every trace's resolved target sets, and what could not be targeted."""

    sets: dict[int, dict]
    facts: RunFacts
    skipped: dict[str, dict]
    """Condition id -> {reason: number of targets skipped}."""
    empty_sets: dict[str, int]
    """Target set -> number of traces where it resolved to no position."""


def _resolve_run_targets(spec, conditions, traces, clean: CleanPass, loaded, prep: Prepared, ranks) -> RunTargets:
    """Target sets of every trace from the clean sinks; refuses a run with nothing to edit."""
    facts = RunFacts.from_sinks(clean.all_sinks)
    needing = _needs_l_start(conditions)
    if needing and facts.modal_l_start is None:
        raise UserError(f"conditions {', '.join(needing)} use layer l_start, but the clean run found no secondary "
                        "sink to take it from; give an integer layer instead", field="interventions")
    sets = {tr.index: resolve_targets(spec.targets, trace=tr.index, token_ids=np.asarray(tr.token_ids),
                                      tokens=clean.tokens[tr.index], sinks=clean.sinks.get(tr.index, []), facts=facts,
                                      tokenizer=loaded.tokenizer, key_scores=clean.key_scores.get(tr.index))
            for tr in traces}
    if not any(skip_reason(c, t, prep.dims["layers"]) is None
               for s in sets.values() for c in conditions for _, group in groups(c, s) for t in group):
        raise UserError("every target set resolved to no position in every trace; check the targets "
                        "(e.g. no secondary sink was detected)", field="targets")
    skipped = skipped_targets(conditions, sets, prep.dims["layers"])
    empty_sets: dict[str, int] = {}
    for s in sets.values():
        for name, members in s.items():
            if not members:
                empty_sets[name] = empty_sets.get(name, 0) + 1
    if ranks.is_main:
        for cid, reasons in skipped.items():
            warn(f"{cid}: " + "; ".join(f"{n} target(s) skipped: {why}" for why, n in reasons.items()))
        for name, count in empty_sets.items():
            warn(f"targets.{name} resolved to no position in {count} of {len(traces)} traces")
    return RunTargets(sets, facts, skipped, empty_sets)


def _new_manifest(spec, prep: Prepared, loaded, config, conditions, clean: CleanPass, targets: RunTargets, *,
                  done: set[int], resume: bool, reuse_prefix: bool, ranks, command: str, load_s: float) -> Manifest:
    """The run's manifest (not yet saved): spec, model, versions, seed, conditions, what was skipped, timings."""
    out = prep.out
    previous = Manifest.load(out / "manifest.json") if resume else {}
    manifest = Manifest(out / "manifest.json", command=command, kind="run", run_id=out.name, seed=spec.seed,
                        spec_name=spec.name, spec_hash=spec.spec_hash, spec=json.loads(spec.canonical_json()),
                        model=loaded.describe(), detection=config.__dict__, conditions=[c.to_dict() for c in conditions],
                        traces_total=len(prep.traces), reuse_prefix=reuse_prefix, world_size=ranks.world_size,
                        memory_estimate={**prep.memory.parts, "total": prep.memory.total_bytes},
                        resumes=previous.get("resumes", 0) + bool(resume), empty_target_sets=targets.empty_sets,
                        skipped_targets=targets.skipped,
                        run_facts={"modal_l_start": targets.facts.modal_l_start,
                                   "sink_token_ids": sorted(targets.facts.sink_token_ids)})
    manifest.data["traces_completed"] = sorted(done)
    manifest.data["timings"].update(load_s=round(load_s, 3), clean_pass_s=round(clean.seconds, 3),
                                    per_trace_s=previous.get("timings", {}).get("per_trace_s", {}))
    return manifest


def _run_conditions(spec, out, loaded, traces, conditions, config, clean_sinks, all_sinks, sets, done, manifest,
                    shard, ranks, progress, report, reuse_prefix, write_report, phase: list[str],
                    analyze=None) -> RunResult:
    """Phase 2 (conditions, trace by trace), the merge of the parts and the statistics; ``phase[-1]``
    names the one in progress (the caller records it if the run stops)."""
    from .distributed import merge_rank_manifests

    phase.append("conditions")

    condition_s: dict[str, float] = {c.id: 0.0 for c in conditions}
    forwards = {"full": 0, "prefix": 0, "suffix": 0, "tokens": 0, "naive_tokens": 0}
    non_finite: list[dict] = []
    # Phase 2: conditions, trace by trace.
    by_index = {tr.index: tr for tr in traces}
    mine = [tr for tr in traces if ranks.owns(tr.index) and tr.index not in done]
    for tr in track(mine, description=f"{len(conditions)} conditions", enabled=progress):
        t_trace = time.perf_counter()
        rows, downstream, extra = run_trace(loaded, tr, conditions, config, clean_sinks.get(tr.index, []),
                                            sets[tr.index], condition_s, reuse_prefix, forwards, non_finite,
                                            measures=spec.measures, traces=by_index, all_sets=sets)
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
        merge_rank_manifests(manifest, out, ranks.world_size, done)
    manifest.data["forwards"] = _forward_totals(manifest.data.get("forwards", forwards), traces)

    phase.append("merging")
    loaded.close()  # the model's attention runs unwrapped again
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
    if analyze is not None and (report if report is not None else spec.report):
        missing = [m for m in statistics_measures() if m not in spec.measures]
        if missing:
            warn(f"statistics and report skipped: they need the measures {', '.join(missing)} "
                 "(add them to measures:, or leave measures out)")
        else:
            # "complete" means stats.json (and report.md when asked for) is written: a run stopped
            # during its statistics is "interrupted" in phase statistics (resume it, or `intervene stats`).
            phase.append("statistics")
            manifest.update(status="analyzing")
            result.stats, result.report = analyze(out, progress=progress, report=write_report)
    # without statistics (report: false, run_spec(report=False), or measures they need left out) the
    # run ends "tables": its tables are final; `intervene stats DIR` adds stats.json and marks it complete
    manifest.finish("complete" if result.stats is not None else "tables")
    return result


def _forward_totals(forwards: dict, traces) -> dict:
    out = dict(forwards)
    out["naive_tokens"] = out.get("naive_tokens", 0) + sum(tr.length for tr in traces)  # the clean forward
    out["reuse_ratio"] = round(out.get("tokens", 0) / max(out["naive_tokens"], 1), 4)
    return out


