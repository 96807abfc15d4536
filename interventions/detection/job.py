"""The ``intervene detect`` job: observe every trace, detect its sinks, write the tables.

Output folder (``out``)::

    sinks.jsonl          one row per sink (see :class:`interventions.detection.rules.Sink`)
    levels.csv           secondary-sink counts per level (l_start, lifetime)
    tokens.csv           secondary-sink token frequencies (the paper's Table 1)
    traces.csv           one row per trace: length, prompt tokens, reference, onset layer, primary
                         positions, ``no_primary`` (True: no massive activation found), sink counts
    sensitivity.csv      secondary levels and counts under cosine 0.9 / 0.95 / 0.98 x norm gate
                         off / 5x / 10x, against the same reference (how much a law depends on the rule)
    profiles.parquet/    per (trace, layer, position) scalars, one Parquet part per trace
    sink_scores/         per trace: float32 [layers, heads, positions] (safetensors)
    parts/               per-trace sink, summary and sensitivity rows (merged into the tables; kept for --resume)
    manifest.json        command, model identity, versions, thresholds, tokenisation policy and the
                         first tokens of each trace, timings, traces completed, primary-sink summary
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from interventions.errors import UserError
from interventions.interrupts import mark_interrupted
from interventions.models.load import LoadedModel, load_model
from interventions.observation import Observation, observe_tokens
from interventions.progress import track, warn
from interventions.spec.traces import Trace, check_trace_lengths, load_traces, tokenizer_policy
from interventions.store import (
    Manifest,
    check_output_dir,
    part_name,
    prepare_output_dir,
    read_arrays,
    write_arrays_atomic,
    write_parquet_atomic,
    write_text_atomic,
)

from .rules import (
    DetectionConfig,
    Sink,
    detect_trace,
    level_counts,
    sensitivity_rows,
    sensitivity_table,
    token_frequencies,
)


@dataclass
class DetectionResult:
    """What ``detect`` found; every table is also on disk when ``out`` was given."""

    sinks: pd.DataFrame
    traces: pd.DataFrame
    levels: pd.DataFrame
    tokens: pd.DataFrame
    sensitivity: pd.DataFrame = field(default_factory=pd.DataFrame)
    """Secondary levels and counts per (cos_threshold, norm_gate) setting (``sensitivity.csv``)."""
    out: Path | None = None
    observations: dict[int, Observation] = field(default_factory=dict)
    """Kept in memory only when ``out`` is None (notebook use)."""

    def secondary(self) -> pd.DataFrame:
        return self.sinks[self.sinks["kind"] == "secondary"]

    def primary(self) -> pd.DataFrame:
        return self.sinks[self.sinks["kind"] == "primary"]


def decode_tokens(tokenizer, ids) -> list[str]:
    return [tokenizer.decode([int(i)]) for i in ids]


def _settings_hash(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:16]


def detect(
    model: str | LoadedModel,
    traces: str | Path | list[Trace],
    out: str | Path | None = None,
    *,
    chat_template: bool = False,
    prepend_bos: str = "auto",
    max_tokens: int | None = None,
    limit: int | None = None,
    dtype: str = "auto",
    device: str = "cpu",
    attn_implementation: str = "sdpa",
    config: DetectionConfig = DetectionConfig(),
    overwrite: bool = False,
    resume: bool = False,
    progress: bool = True,
    command: str = "interventions.detect(...)",
    seed: int = 0,
    force: bool = False,
) -> DetectionResult:
    """Detect primary and secondary sinks in every trace.

    Args:
        model: hub id, local folder, ``.gguf`` file, ``testbed:planted``, or a loaded model.
        traces: JSONL file (``{"text"}`` or ``{"prompt", "output"}`` lines) or tokenized traces.
        out: output folder; None keeps everything in memory (``result.observations``).
        chat_template: wrap each prompt in the tokenizer's chat template.
        prepend_bos: ``auto`` (encode as the tokenizer does), ``always`` or ``never``
            (see :mod:`interventions.spec.traces`).
        config: detection rule and thresholds (:class:`DetectionConfig`).
        overwrite / resume: replace an existing ``out`` / continue an interrupted run there.
        force: skip the memory check (it refuses when the estimate exceeds free memory).

    Returns:
        A :class:`DetectionResult` with the sinks, per-trace, level and token tables.

    Example:
        >>> from interventions import detect
        >>> result = detect("testbed:planted", "traces.jsonl", "results/detect-demo")
        >>> result.secondary()[["trace", "position", "token", "l_start", "lifetime"]]
    """
    _check_arguments(config, prepend_bos, max_tokens)
    out_path = Path(out) if out is not None else None
    if out_path is not None:
        check_output_dir(out_path, overwrite=overwrite, resume=resume)
    loaded, trace_list = _load(model, traces, limit=limit, max_tokens=max_tokens, chat_template=chat_template,
                               prepend_bos=prepend_bos, dtype=dtype, device=device,
                               attn_implementation=attn_implementation, force=force)
    tokenization = _tokenization(loaded, trace_list, chat_template=chat_template, prepend_bos=prepend_bos,
                                 progress=progress)
    settings = {"model": loaded.describe(), "detection": asdict(config), "chat_template": chat_template,
                "prepend_bos": prepend_bos,
                "max_tokens": max_tokens, "limit": limit, "traces": str(traces) if not isinstance(traces, list)
                else f"{len(traces)} tokenized traces"}
    manifest, done = (None, set()) if out_path is None else _open_output(
        out_path, settings, tokenization, n_traces=len(trace_list), overwrite=overwrite, resume=resume,
        command=command, seed=seed)

    kept = _InMemory()
    phase = "traces"
    try:
        for tr in track(trace_list, description="observing traces", enabled=progress):
            for w in tr.warnings:
                warn(w)
            if tr.index in done:
                continue
            t0 = time.perf_counter()
            obs, found, sens, summary = _observe_trace(loaded, tr, config, chat_template)
            if out_path is None:
                kept.add(tr.index, obs, found.sinks, summary, sens)
            else:
                _store_trace(out_path, tr.index, obs, found.sinks, summary, sens)
                manifest.trace_done(tr.index, time.perf_counter() - t0)
        phase = "tables"
        rows, trace_rows, sens_rows = _read_parts(out_path) if out_path is not None else \
            (kept.sinks, kept.traces, kept.sensitivity)
        result = _tables(rows, trace_rows, out_path, kept.observations, sens_rows)
        n_missing = int(result.traces["no_primary"].sum()) if "no_primary" in result.traces else 0
        if n_missing:
            warn(f"{n_missing} of {len(result.traces)} traces have no primary sink (see traces.csv, column "
                 "no_primary): their secondary sinks were not searched")
        if out_path is not None:
            _write_tables(result, out_path)
    except BaseException as exc:
        if manifest is not None:  # every way out, Ctrl-C included, leaves the manifest saying how it ended
            manifest.finish("failed" if not isinstance(exc, KeyboardInterrupt) else "interrupted", phase=phase,
                            error=f"{type(exc).__name__}: {exc}")
        mark_interrupted(exc, out_path, phase)
        raise
    if manifest is not None:
        manifest.finish("complete", n_sinks={"primary": int((result.sinks.kind == "primary").sum()),
                                             "secondary": int((result.sinks.kind == "secondary").sum())},
                        traces_without_primary=n_missing)
    return result


def _check_arguments(config: DetectionConfig, prepend_bos: str, max_tokens: int | None) -> None:
    """Thresholds and options, before anything is read or loaded."""
    if not 0 < config.cos_threshold < 1:
        raise UserError(f"cos_threshold is {config.cos_threshold}; use a value in (0, 1)", field="cos_threshold")
    if config.norm_ratio is not None and config.norm_ratio <= 0:
        raise UserError(f"norm_ratio is {config.norm_ratio}; use a positive number (or leave it unset: no norm gate)",
                        field="norm_ratio")
    if config.massive_ratio <= 1:
        raise UserError(f"massive_ratio is {config.massive_ratio}; use a number above 1", field="massive_ratio")
    if prepend_bos not in ("auto", "always", "never"):
        raise UserError(f"prepend_bos is {prepend_bos!r}; use auto, always or never", field="prepend_bos")
    if max_tokens is not None and max_tokens < 2:
        raise UserError(f"max_tokens is {max_tokens}; it must be at least 2 (a sink needs a later query)",
                        field="max_tokens")


def _load(model, traces, *, limit, max_tokens, chat_template, prepend_bos, dtype, device, attn_implementation,
          force) -> tuple[LoadedModel, list[Trace]]:
    """The model and the tokenized traces; everything that needs no weights (the traces file, the device,
    the tokenizer, trace lengths, memory) is checked before the weights load."""
    if isinstance(traces, (str, Path)):
        from interventions.spec.traces import read_trace_records

        read_trace_records(traces, limit=limit)  # fail on a bad file before the model loads

    def tokenized(tokenizer):
        return traces if isinstance(traces, list) else load_traces(
            traces, tokenizer, limit=limit, max_tokens=max_tokens, chat_template=chat_template,
            prepend_bos=prepend_bos)

    tokenizer = trace_list = None
    if not isinstance(model, LoadedModel):
        from interventions.models.adapters import model_dims
        from interventions.models.load import (
            check_attn_implementation,
            check_device,
            load_config,
            load_tokenizer,
            resolve_dtype,
            resolve_source,
        )
        from interventions.models.memory import check_memory, estimate_memory

        check_attn_implementation(attn_implementation)
        check_device(device, dtype)
        source = resolve_source(model)
        model_config = load_config(source)
        tokenizer = load_tokenizer(source)
        trace_list = tokenized(tokenizer)
        check_trace_lengths(trace_list, model_dims(model_config))
        check_memory(estimate_memory(model_config, dtype=resolve_dtype(model_config, dtype, device),
                                     tokens=max((tr.length for tr in trace_list), default=1), run=False,
                                     attn_implementation=attn_implementation), device, force=force)
    loaded = model if isinstance(model, LoadedModel) else load_model(
        model, dtype=dtype, device=device, attn_implementation=attn_implementation, tokenizer=tokenizer)
    if trace_list is None:
        trace_list = tokenized(loaded.tokenizer)
    check_trace_lengths(trace_list, loaded)
    return loaded, trace_list


def _tokenization(loaded: LoadedModel, trace_list: list[Trace], *, chat_template: bool, prepend_bos: str,
                  progress: bool) -> dict:
    """How the traces were tokenized (for the manifest), with the first trace's opening tokens shown."""
    tokenization = tokenizer_policy(loaded.tokenizer, chat_template=chat_template, prepend_bos=prepend_bos)
    tokenization["first_tokens"] = {str(tr.index): first_tokens(loaded.tokenizer, tr.token_ids) for tr in trace_list}
    tokenization["applied"] = sorted({tr.bos_policy for tr in trace_list})
    if progress and trace_list:
        from interventions.progress import console

        tr0 = trace_list[0]
        console.print(f"trace {tr0.index} starts with {first_tokens(loaded.tokenizer, tr0.token_ids)} "
                      f"(special tokens: {tokenization['special_tokens']}; prepend_bos: {prepend_bos})",
                      highlight=False, soft_wrap=True)
    return tokenization


def _open_output(out_path: Path, settings: dict, tokenization: dict, *, n_traces: int, overwrite: bool,
                 resume: bool, command: str, seed: int) -> tuple[Manifest, set[int]]:
    """The output folder and its manifest; on resume, the traces already done (same settings only)."""
    done: set[int] = set()
    if resume and (out_path / "manifest.json").exists():
        previous = Manifest.load(out_path / "manifest.json")
        if previous.get("settings_hash") != _settings_hash(settings):
            raise UserError(f"{out_path} was made with different settings (model, thresholds or traces); "
                            "use a new --out or --overwrite", field="resume")
        done = set(previous.get("traces_completed", []))
    prepare_output_dir(out_path, overwrite=overwrite, resume=resume)
    manifest = Manifest(out_path / "manifest.json", command=command, kind="detect", seed=seed,
                        settings=settings, settings_hash=_settings_hash(settings),
                        traces_total=n_traces, tokenization=tokenization)
    manifest.data["traces_completed"] = sorted(done)
    manifest.save()
    return manifest, done


def _observe_trace(loaded: LoadedModel, tr: Trace, config: DetectionConfig, chat_template: bool):
    """One trace's forward and sinks: ``(observation, detected, sensitivity rows, trace summary row)``."""
    obs = observe_tokens(loaded, tr.token_ids, reference=config.reference, massive_ratio=config.massive_ratio)
    tokens = decode_tokens(loaded.tokenizer, tr.token_ids)
    found = detect_trace(obs, trace=tr.index, tokens=tokens, config=config, chat_template=chat_template)
    for w in found.warnings:
        warn(w)
    sinks = found.sinks
    sens = sensitivity_rows(obs, found, trace=tr.index, min_lifetime=config.min_lifetime)
    summary = {"trace": tr.index, "trace_id": tr.trace_id, "length": tr.length,
               "original_length": tr.original_length, "prompt_tokens": tr.prompt_tokens,
               "reference": found.reference, "onset_layer": found.onset,
               "primary_positions": " ".join(str(p) for p in found.primaries),
               "no_primary": found.no_primary,
               "n_primary": sum(s.kind == "primary" for s in sinks),
               "n_secondary": sum(s.kind == "secondary" for s in sinks)}
    return obs, found, sens, summary


def _store_trace(out_path: Path, index: int, obs: Observation, sinks: list[Sink], summary: dict,
                 sens: list[dict]) -> None:
    """One trace's parts, each written atomically (a resumed run reads them back)."""
    write_parquet_atomic(out_path / "profiles.parquet" / part_name(index), obs.profile_frame(index))
    write_arrays_atomic(out_path / "sink_scores" / part_name(index, ".safetensors"),
                        {"sink_score_lht": obs.sink_scores, "token_ids": obs.token_ids})
    write_text_atomic(out_path / "parts" / "sinks" / part_name(index, ".jsonl"),
                      "".join(json.dumps(s.to_dict()) + "\n" for s in sinks))
    write_text_atomic(out_path / "parts" / "traces" / part_name(index, ".json"), json.dumps(summary))
    write_text_atomic(out_path / "parts" / "sensitivity" / part_name(index, ".json"), json.dumps(sens))


@dataclass
class _InMemory:
    """What a detection without an output folder keeps: observations and rows of every trace."""

    observations: dict = field(default_factory=dict)
    sinks: list = field(default_factory=list)
    traces: list = field(default_factory=list)
    sensitivity: list = field(default_factory=list)

    def add(self, index: int, obs: Observation, sinks: list, summary: dict, sens: list) -> None:
        self.observations[index] = obs
        self.sinks += sinks
        self.traces.append(summary)
        self.sensitivity += sens


def first_tokens(tokenizer, ids, n: int = 8) -> list[str]:
    """The first ``n`` tokens of a trace as strings (what the manifest and ``detect`` show)."""
    return decode_tokens(tokenizer, list(ids)[:n])


def _read_parts(out: Path) -> tuple[list[Sink], list[dict], list[dict]]:
    sinks = [Sink(**json.loads(line)) for f in sorted((out / "parts" / "sinks").glob("part-*.jsonl"))
             for line in f.read_text(encoding="utf-8").splitlines() if line.strip()]
    traces = [json.loads(f.read_text(encoding="utf-8")) for f in sorted((out / "parts" / "traces").glob("*.json"))]
    sens = [row for f in sorted((out / "parts" / "sensitivity").glob("*.json"))
            for row in json.loads(f.read_text(encoding="utf-8"))]
    return sinks, traces, sens


SINK_COLUMNS = list(Sink.__dataclass_fields__)


def _tables(sinks: list[Sink], trace_rows: list[dict], out, observations, sens_rows=()) -> DetectionResult:
    sinks_df = pd.DataFrame([s.to_dict() for s in sinks], columns=SINK_COLUMNS)
    levels = pd.DataFrame([(l, lt, n) for (l, lt), n in level_counts(sinks).items()],
                          columns=["l_start", "lifetime", "count"])
    tokens = pd.DataFrame(token_frequencies(sinks), columns=["token", "token_id", "count", "share"])
    traces_df = pd.DataFrame(trace_rows).sort_values("trace").reset_index(drop=True) if trace_rows else pd.DataFrame()
    return DetectionResult(sinks=sinks_df.sort_values(["trace", "position"]).reset_index(drop=True),
                           traces=traces_df, levels=levels, tokens=tokens, sensitivity=sensitivity_table(list(sens_rows)),
                           out=out, observations=observations)


def _write_tables(result: DetectionResult, out: Path) -> None:
    write_text_atomic(out / "sinks.jsonl", "".join(json.dumps(r) + "\n" for r in
                                                   json.loads(result.sinks.to_json(orient="records"))))
    write_text_atomic(out / "levels.csv", result.levels.to_csv(index=False))
    write_text_atomic(out / "tokens.csv", result.tokens.to_csv(index=False))
    write_text_atomic(out / "traces.csv", result.traces.to_csv(index=False))
    write_text_atomic(out / "sensitivity.csv", result.sensitivity.to_csv(index=False))


def load_detection(out: str | Path) -> DetectionResult:
    """Read a finished ``intervene detect`` folder back (sinks, traces, levels, tokens)."""
    out = Path(out)
    if not (out / "sinks.jsonl").exists():
        raise UserError(f"{out} has no sinks.jsonl; is it an `intervene detect` output folder?", field="out")
    sinks = pd.read_json(out / "sinks.jsonl", lines=True) if (out / "sinks.jsonl").stat().st_size else \
        pd.DataFrame(columns=SINK_COLUMNS)
    sens = pd.read_csv(out / "sensitivity.csv") if (out / "sensitivity.csv").is_file() and \
        (out / "sensitivity.csv").stat().st_size > 1 else pd.DataFrame()
    return DetectionResult(sinks=sinks, traces=pd.read_csv(out / "traces.csv"), levels=pd.read_csv(out / "levels.csv"),
                           tokens=pd.read_csv(out / "tokens.csv", keep_default_na=False), sensitivity=sens, out=out)


def load_sink_scores(out: str | Path, trace: int) -> np.ndarray:
    """float32 [layers, heads, positions] sink scores of one trace from a detect folder."""
    return read_arrays(Path(out) / "sink_scores" / part_name(trace, ".safetensors"))["sink_score_lht"]
