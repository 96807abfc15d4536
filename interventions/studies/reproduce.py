"""The paper on any model in one command: detection, the observational analyses and the four causal checks.

:func:`reproduce` runs, on one model and one trace file, what the paper (*On the Existence and
Behaviour of Secondary Attention Sinks*, Secs. 3-5) reports for its models, and writes it into one
folder with one ``report.md``:

======  ==========================================================================================
phase   what it runs and which part of the paper it gives
======  ==========================================================================================
detect  :func:`interventions.detection.job.detect`: Table 2's row (layers, primary sink layer, top-3
        l_start with their share, secondary sink count), Table 1 (sink tokens), Fig. 2 (levels as
        (l_start, lifetime) counts), Fig. 3 (sinks by token index), and the independent units
        (below)
origin  :func:`interventions.studies.origin.analyze_origin`: Fig. 4 right (cosine to the primary sink of
        the future sinks' MLP input and output at l_start) and Fig. 5 (PCs of the MLP inputs
        pushed through the MLP: norm and cosine of the output)
H1      generated ``zero`` spec (l_start MLP output of the sinks, matched random controls)
H2      generated ``scale`` spec (2/5/10x for non-sink occurrences of sink tokens, 0.5/2x for the
        sinks; matched controls); its run's statistics also give Sec. 5's norm -> score and
        norm -> lifetime fits (Fig. 7 mid/right)
H3      generated ``mean_swap`` spec (hidden state, attention output and MLP output swapped for
        the mean non-sink token, l_start - 4 .. l_start): the swap timeline (Fig. 8)
H4      generated ``attention_mask`` spec (mask attention to the sinks in the layers they live,
        with and without redirect to the primary sink; controls matched on attention mass); its
        run's clean profile gives Fig. 7 left (primary and secondary sink scores across depth,
        the valley)
report  ``report.md``, ``reproduce.json`` and the figures
======  ==========================================================================================

Each causal phase writes its spec (``specs/<name>.yaml``) and runs it with
:func:`interventions.pipeline.run_spec` (prefix reuse on) and :func:`interventions.pipeline.analyze_run`;
the verdict records are reported as the verdict path gives them. Beside each, two things the
paper's "Next Checks" ask for and the verdict record does not carry:

* **Functional cost**: the change in NLL of the trace's own next token (``delta_nll`` in the
  run's ``downstream.parquet``: intervened minus clean, every position from the first edited one
  on), per trace, targets minus controls, with the exact trace-level sign flip of
  :func:`interventions.stats.verdicts.trace_sign_flip` (no CI or p on an exact zero).
* **Independent units**. In a causal model two positions with the same preceding tokens have
  bit-identical activations, so a sink inside a prompt template every trace shares is one
  measurement repeated G times, not G. Per verdict: the target positions it edited, how many
  distinct prefixes (token ids up to and including the position) they have, and how many traces
  hold at least one target in their own text (a prefix no other trace has). When the traces share
  a template and some sinks lie past it, the tests target only those (``min_position`` on the
  ``secondary_sinks`` target set) and the report says so.

A model without secondary sinks (or with too few for a test) gets one line per part that needs
them; the rest still runs. ``resume=True`` reuses every finished phase (``phases/<name>.json``)
and resumes an interrupted run folder.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from interventions.errors import UserError
from interventions.progress import info

CAUSAL_PHASES = ("H1", "H2", "H3", "H4")
PHASES = ("detect", "origin", *CAUSAL_PHASES, "report")
SPEC_NAMES = {"H1": "mlp_zero", "H2": "norm_scale", "H3": "mean_swap", "H4": "attn_mask"}
SWAP_OFFSETS = 4
"""The swap timeline covers l_start - SWAP_OFFSETS .. l_start (the paper's Fig. 8 sweeps the layers before l_start)."""
PAPER_CLAIMS = {
    "H1": "zeroing the l_start MLP output of a future sink prevents the sink (Finding 2.1, causal side)",
    "H2": "scaling the l_start MLP output sets whether a token becomes a sink and how long it lives (Finding 3.2)",
    "H3": "mean-swapping a future sink's activations before l_start suppresses it (Finding 2.2, Fig. 8)",
    "H4": "masking attention to secondary sinks changes the primary sink / predictions (Finding 3.1 is its "
          "observational side; the paper does not mask)",
}


@dataclass
class ReproduceResult:
    """What :func:`reproduce` wrote: the folder, its report and every phase's record."""

    out: Path
    report: Path
    phases: dict[str, dict]
    seconds: float
    record: dict = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# specs


def _declared(h: str, measure, selector: dict, compare: str) -> list[dict]:
    """The hypothesis a generated spec declares, with its comparison (what the shipped specs declare)."""
    out = {"id": h, "conditions": selector, "measure": measure, "compare": compare}
    if compare == "placebo":
        out["placebo"] = {"edit": "noise"}   # the magnitude-matched placebo: an arm that can move both ways
    return [out]


def causal_specs(model: str, traces: str, *, chat_template: bool, max_traces: int, max_tokens: int | None,
                 dtype: str, device: str, seed: int, min_position: int | None = None) -> dict[str, dict]:
    """The four causal specs (as dicts, the structure of ``specs/*.yaml``) for one model and trace file.

    Targets come from the run's own clean detection (``secondary_sinks``; with ``min_position``
    only sinks at that position or later); H2's non-sinks are the other occurrences of sink tokens
    (``same_token_non_sinks``), so nothing depends on the model.
    """
    sinks: dict[str, Any] = {"select": "secondary_sinks"}
    if min_position:
        sinks["min_position"] = int(min_position)
    base = {"model": model, "traces": traces, "limit": max_traces, "chat_template": chat_template,
            "dtype": dtype, "device": device, "seed": seed, "report": False}
    if max_tokens:
        base["max_tokens"] = max_tokens
    return {
        "H1": {**base, "name": SPEC_NAMES["H1"], "description": "H1: zero the l_start MLP output of secondary sinks.",
               "targets": {"sinks": sinks, "ctrl": {"select": "matched_controls", "match": "sinks", "seed": 0}},
               "interventions": [{"kind": "zero", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"],
                                  "controls": "ctrl"}],
               "hypotheses": _declared("H1", "sink_rate_change", {"kind": "zero", "site": "mlp_output"}, "placebo")},
        "H2": {**base, "name": SPEC_NAMES["H2"],
               "description": "H2: scale the l_start MLP output of non-sinks (2/5/10x) and sinks (0.5/2x).",
               "targets": {"sinks": sinks, "others": {"select": "same_token_non_sinks"},
                           "ctrl": {"select": "matched_controls", "match": "others", "seed": 0},
                           "sink_ctrl": {"select": "matched_controls", "match": "sinks", "seed": 1}},
               "interventions": [
                   {"kind": "scale", "site": "mlp_output", "layer": "l_start", "targets": ["others"],
                    "factors": [2, 5, 10], "controls": "ctrl"},
                   {"kind": "scale", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"],
                    "factors": [0.5, 2], "controls": "sink_ctrl"}],
               "hypotheses": _declared("H2", "lifetime_slope", {"kind": "scale", "site": "mlp_output"}, "placebo")},
        "H3": {**base, "name": SPEC_NAMES["H3"],
               "description": "H3: swap future sinks' activations with the mean non-sink token, layer by layer.",
               "targets": {"sinks": sinks},
               "interventions": [{"kind": "mean_swap", "site": ["block_output", "attention_output", "mlp_output"],
                                  "layers": {"from": 0, "to": "l_start"}, "max_offset": SWAP_OFFSETS,
                                  "targets": ["sinks"]}],
               "hypotheses": _declared("H3", "suppression_rate", {"kind": "mean_swap"}, "placebo")},
        "H4": {**base, "name": SPEC_NAMES["H4"], "description": "H4: mask attention to secondary sinks where they live.",
               "targets": {"sinks": sinks, "ctrl": {"select": "matched_controls", "match": "sinks",
                                                    "by": "attention_mass"}},
               "interventions": [{"kind": "attention_mask", "layers": "sink_lifetime", "targets": ["sinks"],
                                  "controls": "ctrl", "redirect": "none"},
                                 {"kind": "attention_mask", "layers": "sink_lifetime", "targets": ["sinks"],
                                  "controls": "ctrl", "redirect": "bos"}],
               "hypotheses": _declared("H4", ["primary_beyond_renormalisation", "kl"], {"kind": "attention_mask"},
                                       "controls")},
    }


def _validated(data: dict, name: str):
    from interventions.spec import Spec

    return Spec.from_dict(data, base_dir=Path.cwd(), check_files=True, source_name=f"{name}.yaml")


# --------------------------------------------------------------------------------------------
# independent units


def prefix_keys(token_ids: dict[int, list[int]]) -> dict[tuple[int, int], str]:
    """Map (trace, position) -> a hash of the token ids up to and including the position.

    Equal keys mean equal prefixes, hence (in a causal model) identical activations at that
    position: one measurement, however many traces repeat it."""
    out = {}
    for trace, ids in token_ids.items():
        h = hashlib.sha1()
        for pos, tok in enumerate(ids):
            h.update(int(tok).to_bytes(4, "little", signed=False))
            out[(trace, pos)] = h.copy().hexdigest()[:16]
    return out


def shared_prefix_length(token_ids: dict[int, list[int]]) -> int:
    """Length of the longest token prefix every trace shares (0 with fewer than two traces)."""
    seqs = list(token_ids.values())
    if len(seqs) < 2:
        return 0
    n = min(len(s) for s in seqs)
    for i in range(n):
        if any(s[i] != seqs[0][i] for s in seqs[1:]):
            return i
    return n


def independent_units(positions: pd.DataFrame, keys: dict[tuple[int, int], str]) -> dict:
    """How many independent measurements a set of (trace, position) rows holds.

    ``n_positions``: distinct (trace, position); ``n_independent``: distinct prefixes among them;
    ``n_traces``: traces with a position; ``n_traces_own_text``: traces with at least one position
    whose prefix no other trace has; ``effective_units``: distinct trace-level patterns (traces whose
    positions all share prefixes with other traces collapse into one unit per distinct pattern).
    """
    if positions is None or not len(positions):
        return {"n_positions": 0, "n_independent": 0, "n_traces": 0, "n_traces_own_text": 0, "effective_units": 0}
    pos = positions[["trace", "position"]].drop_duplicates()
    k = [keys.get((int(t), int(p))) for t, p in zip(pos["trace"], pos["position"])]
    pos = pos.assign(key=k)
    traces_of = pos.groupby("key")["trace"].nunique()
    own = pos[pos["key"].map(traces_of) == 1]
    patterns = {frozenset(g["key"]) for _, g in pos.groupby("trace")}
    shared_only = [frozenset(g["key"]) for t, g in pos.groupby("trace") if t not in set(own["trace"])]
    return {"n_positions": int(len(pos)), "n_independent": int(pos["key"].nunique()),
            "n_traces": int(pos["trace"].nunique()), "n_traces_own_text": int(own["trace"].nunique()),
            "effective_units": int(own["trace"].nunique() + len(set(shared_only))),
            "n_patterns": len(patterns)}


# --------------------------------------------------------------------------------------------
# functional cost


def functional_cost(run_dir: Path, *, seed: int = 0) -> dict:
    """Change in NLL of each trace's own next token (intervened minus clean), per condition and overall.

    Unit: the trace (its mean over positions from the first edited one on). With controls the
    per-trace difference targets minus controls is tested (exact sign flip, CI by inversion);
    without, the targets' change itself against 0. Exact zeros get no p or CI (the verdict code's
    convention)."""
    from interventions.stats.verdicts import trace_sign_flip

    path = run_dir / "downstream.parquet"
    if not path.exists():
        return {"estimable": False, "reason": "the run wrote no downstream.parquet"}
    from interventions.store import read_parts

    d = read_parts(path) if path.is_dir() else pd.read_parquet(path)
    if d.empty or "delta_nll" not in d.columns:
        return {"estimable": False, "reason": "no delta_nll rows (measures without delta_nll)"}
    d = d[~d.get("non_finite", False).astype(bool)] if "non_finite" in d.columns else d
    d = d.dropna(subset=["delta_nll"])
    d = d[~d["condition"].astype(str).str.endswith(".placebo")]   # the cost of the edits, not of their placebos
    d["is_control"] = d["is_control"].astype(bool)

    def summarise(rows: pd.DataFrame, label: str) -> dict:
        per = rows.groupby(["is_control", "trace"])["delta_nll"].mean()
        tgt = per.loc[False] if False in per.index.get_level_values(0) else pd.Series(dtype=float)
        ctl = per.loc[True] if True in per.index.get_level_values(0) else None
        if ctl is not None:
            both = tgt.index.intersection(ctl.index)
            diff, compared = (tgt.loc[both] - ctl.loc[both]).to_numpy(float), "controls"
        else:
            diff, compared = tgt.to_numpy(float), "clean"
        est = trace_sign_flip(diff, seed=seed) if len(diff) else {}
        return {"label": label, "targets_delta_nll": float(tgt.mean()) if len(tgt) else None,
                "controls_delta_nll": float(ctl.mean()) if ctl is not None and len(ctl) else None,
                "compared_with": compared, "effect": est.get("effect"),
                "ci": [est.get("ci_low"), est.get("ci_high")], "p": est.get("p"),
                "exact_null": est.get("exact_null"), "n_traces": est.get("n_traces", 0)}

    out = {"estimable": True, "unit": "nats per token, trace mean over positions from the first edit on",
           "overall": summarise(d, "all conditions"),
           "by_condition": [summarise(g, str(c)) for c, g in d.groupby("condition", sort=False)]}
    return out


# --------------------------------------------------------------------------------------------
# phases


def _load(settings: dict):
    from interventions.models.load import load_model

    return load_model(settings["model"], dtype=settings["dtype"], device=settings["device"])


def _release(loaded) -> None:
    """Unwrap and free the study's own copy of the model (returns None to rebind the name)."""
    import gc

    loaded.close()
    loaded.model = None
    gc.collect()
    return None


def _tokenized(loaded, settings: dict):
    """The traces as every phase sees them (a testbed's own traces as its spec runs build them)."""
    from interventions.spec.traces import load_traces, traces_from_records

    if settings["traces"] == "testbed":
        from interventions.testbed.planted import load_truth, planted_traces

        texts = planted_traces(load_truth(loaded.source.path), n=settings["max_traces"], seed=settings["seed"],
                               gated=True)
        return traces_from_records([{"text": t} for t in texts], loaded.tokenizer, max_tokens=settings["max_tokens"])
    return load_traces(settings["traces"], loaded.tokenizer, limit=settings["max_traces"],
                       max_tokens=settings["max_tokens"], chat_template=settings["chat_template"])


def _time_forward(loaded, traces) -> float:
    """Seconds of one plain clean forward of the longest trace (median of two, after a warm-up)."""
    import torch

    ids = max(traces, key=lambda t: t.length).token_ids
    x = torch.tensor([list(ids)], device=loaded.input_device)
    times = []
    with torch.no_grad():
        for _ in range(3):
            t0 = time.perf_counter()
            loaded.model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times[1:]))


def _n_forwards(specs: dict[str, dict], n_traces: int) -> dict[str, int]:
    """Forwards per phase, an upper bound (prefix reuse makes the intervened ones shorter).

    Detection and origin: one observed forward per trace (about 3 plain forwards' cost each);
    a run: its clean pass (observed) plus one forward per condition and arm per trace, plus one
    capture forward per trace for the mean swap."""
    out = {"detect": 3 * n_traces, "origin": 4 * n_traces}
    for h, data in specs.items():
        spec = _validated(data, data["name"])
        arms = sum(1 + bool(c.controls) for c in spec.conditions())
        out[h] = n_traces * (3 + arms + (1 if h == "H3" else 0))
    return out


def _phase_detect(loaded, traces, out: Path, settings: dict, progress: bool) -> dict:
    from interventions.detection.job import detect
    from interventions.detection.rules import DetectionConfig

    result = detect(loaded, traces, out / "detect", config=DetectionConfig(), progress=progress,
                    chat_template=settings["chat_template"], resume=(out / "detect" / "manifest.json").exists(),
                    command=settings["command"])
    sec = result.secondary()
    m = {"n_traces": int(len(result.traces)), "n_primary": int(len(result.primary())), "n_secondary": int(len(sec)),
         "token_table": [{"token": str(r.token), "token_id": int(r.token_id), "count": int(r.count),
                          "share": float(r.share)} for r in result.tokens.itertuples()]}
    prim = result.primary()
    token_ids = {int(t.index): [int(i) for i in t.token_ids] for t in traces}
    keys = prefix_keys(token_ids)
    shared = shared_prefix_length(token_ids)
    l_counts = sec["l_start"].value_counts() if len(sec) else pd.Series(dtype=int)
    top3 = [{"l_start": int(k), "share": float(v / len(sec))} for k, v in
            l_counts.sort_values(ascending=False, kind="stable").head(3).items()]
    onset = result.traces["onset_layer"].dropna()
    own = sec[sec["position"] >= shared] if shared else sec
    return {
        "layers": int(loaded.dims["layers"]),
        "n_traces": m["n_traces"], "trace_lengths": [int(t.length) for t in traces],
        "primary_sink_layer": int(onset.mode().min()) if len(onset) else None,
        "primary_sink_layers": {str(int(k)): int(v) for k, v in onset.value_counts().sort_index().items()},
        "n_primary": m["n_primary"], "n_secondary": m["n_secondary"], "top3_l_start": top3,
        "level_counts": [{"l_start": int(r.l_start), "lifetime": int(r.lifetime), "count": int(r.count)}
                         for r in result.levels.itertuples()],
        "token_table": m["token_table"],
        "sinks": [{"trace": int(r.trace), "position": int(r.position), "token": str(r.token),
                   "l_start": int(r.l_start), "lifetime": int(r.lifetime), "mlp_out_norm": float(r.mlp_out_norm),
                   "in_shared_prefix": bool(r.position < shared)} for r in sec.itertuples()],
        "primary_positions": sorted({int(p) for p in prim["position"]}) if len(prim) else [],
        "shared_prefix_tokens": int(shared),
        "units_all_sinks": independent_units(sec, keys),
        "units_own_text_sinks": independent_units(own, keys),
        "n_own_text_sinks": int(len(own)),
        "token_ids": {str(k): v for k, v in token_ids.items()},
    }


def _phase_origin(loaded, traces, out: Path, detect: dict, progress: bool) -> dict:
    from .origin import analyze_origin, origin_summary_numbers

    if not detect["n_secondary"]:
        return {"skipped": "no secondary sinks: no future sink to read the l_start MLP at"}
    result = analyze_origin(loaded, traces, out / "origin", progress=progress)
    numbers = origin_summary_numbers(result)
    return {"numbers": numbers, "verdict": result.verdict,
            "cosines": result.cosines[["trace", "position", "token", "l_start", "mlp_in_cos", "mlp_out_cos",
                                       "hidden_cos_before", "hidden_cos", "mlp_out_norm"]].to_dict(orient="records"),
            "probe": result.probe.to_dict(orient="records")}


def _verdict_fields(v: dict) -> dict:
    keep = ("key", "hypothesis", "verdict", "effect", "ci", "p", "n", "n_traces", "compared_with",
            "comparison_conditions", "conditions", "reason", "n_independent", "effective_units", "notes")
    out = {k: v[k] for k in keep if k in v}
    out["components"] = [{k: c.get(k) for k in ("name", "verdict", "effect", "ci", "p", "n", "n_traces",
                                                  "n_independent", "effective_units", "target_mean",
                                                  "comparison_mean", "reason") if k in c} for c in v.get("components", [])]
    return out


def _phase_causal(h: str, data: dict, out: Path, detect: dict, resume: bool, progress: bool, command: str,
                  run_reports: bool = True) -> dict:
    from interventions.pipeline import analyze_run
    from interventions.pipeline import run_spec
    from interventions.stats.verdicts import ALPHA, min_traces_for

    targets_needed = detect["n_own_text_sinks"] if data["targets"]["sinks"].get("min_position") else \
        detect["n_secondary"]
    if not targets_needed:
        return {"skipped": f"{h} needs secondary sinks to edit and the model has none on these traces"}
    spec = _validated(data, data["name"])
    run_dir = out / "runs" / data["name"]
    (out / "specs").mkdir(parents=True, exist_ok=True)
    (out / "specs" / f"{data['name']}.yaml").write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    resume_run = resume and (run_dir / "manifest.json").exists()
    if run_dir.exists() and not resume_run:
        import shutil

        shutil.rmtree(run_dir)  # a folder without a manifest is an interrupted start: nothing to keep
    run_spec(spec, run_dir=run_dir, resume=resume_run, progress=progress, report=False, command=command)
    stats, _ = analyze_run(run_dir, progress=progress, report=run_reports)
    from interventions.store import read_parts

    # per-trace parts; a trace without targets writes an empty part, so read them as the run does
    effects = read_parts(run_dir / "effects.parquet") if (run_dir / "effects.parquet").is_dir() else \
        pd.read_parquet(run_dir / "effects.parquet") if (run_dir / "effects.parquet").exists() else pd.DataFrame()
    keys = prefix_keys({int(k): v for k, v in detect["token_ids"].items()})
    verdicts = {}
    for key, v in (stats.get("verdicts") or {}).items():
        if key.split("/")[0] != h:  # every run's stats list H1-H4; this phase answers one
            continue
        rec = _verdict_fields(v)
        rows = effects[effects["condition"].isin(v.get("conditions") or []) & ~effects["is_control"].astype(bool)] \
            if len(effects) and "condition" in effects.columns else None
        rec["units"] = independent_units(rows, keys)
        verdicts[key] = rec
    need = min_traces_for(ALPHA)
    with_targets = max((r["units"]["n_traces"] for r in verdicts.values()), default=0)
    record = {"spec": data["name"], "run_dir": str(run_dir), "verdicts": verdicts,
              "functional_cost": functional_cost(run_dir), "min_traces": need,
              "too_few": (f"{h}: only {with_targets} trace(s) hold a target; an exact sign flip needs >= {need} "
                          "for any decisive verdict") if with_targets < need else None}
    if h == "H2":
        record["norm_score"] = stats.get("norm_score")
        record["norm_lifetime"] = stats.get("norm_lifetime")
        record["dose_response"] = stats.get("dose_response")
    if h == "H3":
        record["swap_rates"] = (stats.get("summaries") or {}).get("swap_rates")
    if h == "H4":
        record["compensation"] = stats.get("compensation")
        record["secondary_score_by_layer"] = (stats.get("summaries") or {}).get("secondary_score_by_layer")
        record["mask_kl"] = (stats.get("summaries") or {}).get("mask_kl")
    return record


# --------------------------------------------------------------------------------------------
# the whole study


def _settings(model: str, traces: str | None, chat_template: bool, max_traces: int, max_tokens: int | None,
              dtype: str, device: str, seed: int) -> dict:
    if traces is None:
        if not str(model).startswith("testbed:"):
            raise UserError("a real model needs a JSONL file of traces: give --traces FILE", field="--traces")
        traces = "testbed"
    elif traces != "testbed":
        p = Path(traces).expanduser()
        if not p.is_file():
            raise UserError(f"--traces {traces}: no such file; give a JSONL file of traces", field="--traces")
        traces = str(p.resolve())
    if traces == "testbed" and not str(model).startswith("testbed:"):
        raise UserError("--traces testbed needs a testbed model (testbed:planted)", field="--traces")
    if max_traces < 1:
        raise UserError("--max-traces must be >= 1", field="--max-traces")
    if max_tokens is not None and max_tokens < 8:
        raise UserError("--max-tokens must be >= 8 (or left out for whole traces)", field="--max-tokens")
    m = str(model)
    if not m.startswith("testbed:") and Path(m).expanduser().exists():
        m = str(Path(m).expanduser().resolve())
    return {"model": m, "traces": traces, "chat_template": bool(chat_template), "max_traces": int(max_traces),
            "max_tokens": int(max_tokens) if max_tokens else None, "dtype": dtype, "device": device, "seed": int(seed)}


def reproduce(model: str, traces: str | Path | None = None, out: str | Path = "results/reproduce", *,
              chat_template: bool = False, max_traces: int = 8, max_tokens: int | None = 256, resume: bool = False,
              dtype: str = "auto", device: str = "cpu", seed: int = 0, threads: int | None = None,
              progress: bool = True, phases: tuple[str, ...] = PHASES, run_reports: bool = True,
              command: str = "interventions.studies.reproduce(...)") -> ReproduceResult:
    """Run the paper's analyses (Secs. 3-5) and its four causal checks on ``model``; write ``out/report.md``.

    Args:
        model: hub id, local HF folder, ``.gguf`` file or ``testbed:planted``.
        traces: JSONL trace file (``{"text"}`` or ``{"prompt", "output"}`` lines); None or
            ``"testbed"`` for a testbed model's own traces.
        out: the study folder (``report.md``, ``reproduce.json``, ``detect/``, ``origin/``,
            ``specs/``, ``runs/<spec>/``, ``figures/``, ``phases/``).
        chat_template: wrap each prompt in the tokenizer's chat template.
        max_traces / max_tokens: the first N traces, each cut to T tokens.
        resume: reuse the finished phases in ``out`` (settings must match) and resume an
            interrupted run; without it ``out`` must be new or empty.
        dtype / device: as for :func:`interventions.models.load.load_model`.
        seed: seed of the planted traces and the matched controls.
        threads: torch CPU threads for the duration (None: torch's setting).
        progress: progress bars and phase lines.
        phases: run only these phases (the report is written from whatever is finished).
        run_reports: also write each causal run's own ``report.md`` with its figures (Fig. 7
            mid/right come from the H2 run's); False saves a few seconds per run.

    Returns:
        A :class:`ReproduceResult`; ``reproduce.json`` holds every number the report shows.

    Example:
        >>> from interventions.studies.reproduce import reproduce
        >>> r = reproduce("testbed:planted", out="results/reproduce-planted")
        >>> r.phases["H1"]["verdicts"]["H1"]["verdict"]
    """
    import torch

    settings = _settings(str(model), None if traces is None else str(traces), chat_template, max_traces, max_tokens,
                         dtype, device, seed)
    out = Path(out)
    store = _open_study(out, settings, phases, resume=resume, device=device, dtype=dtype)
    settings = {**settings, "command": command}
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    t_all = time.perf_counter()
    results: dict[str, dict] = {}
    try:
        todo = [p for p in phases if p != "report" and store.done(p) is None]
        loaded, toks = _load_and_estimate(settings, todo, progress) if todo else (None, None)
        for name in [p for p in phases if p != "report"]:
            prev = store.done(name)
            if prev is not None:
                if progress:
                    info(f"phase {name}: reused ({store.path(name)})")
                results[name] = prev
                continue
            if name != "detect" and "detect" not in results:
                results["detect"] = store.finished("detect")
                if results["detect"] is None:
                    raise UserError(f"phase {name} needs the detect phase; run it first", field="phases")
            if name in CAUSAL_PHASES and loaded is not None:
                # each run loads its own copy (run_spec); two copies of a 1.5B model in float32 do not fit
                loaded = _release(loaded)
            if progress:
                info(f"phase {name}: running")
            t0 = time.perf_counter()
            record = _run_phase(name, loaded, toks, out, settings, results, resume=resume, progress=progress,
                                command=command, run_reports=run_reports)
            results[name] = store.save(name, record, time.perf_counter() - t0)
            if progress:
                info(f"phase {name}: done in {results[name]['seconds']:.1f} s")
        if loaded is not None:
            loaded = _release(loaded)
    finally:
        torch.set_num_threads(before)
    for name in PHASES[:-1]:
        if name not in results and store.finished(name) is not None:
            results[name] = store.finished(name)
    seconds = time.perf_counter() - t_all
    from interventions.report.reproduce_report import write_report

    report, record = write_report(out, settings, results, seconds)
    return ReproduceResult(out=out, report=report, phases=results, seconds=seconds, record=record)


@dataclass
class _PhaseStore:
    """The study folder's finished phases (``phases/<name>.json``), read back on ``--resume``."""

    folder: Path
    resume: bool

    def path(self, name: str) -> Path:
        return self.folder / f"{name}.json"

    def finished(self, name: str) -> dict | None:
        """The phase's record if it finished in this folder (whether or not this call resumes)."""
        f = self.path(name)
        return json.loads(f.read_text()) if f.exists() else None

    def done(self, name: str) -> dict | None:
        """The phase's record when resuming and it finished, else None (it runs again)."""
        return self.finished(name) if self.resume else None

    def save(self, name: str, record: dict, seconds: float) -> dict:
        from interventions.store import to_jsonable, write_json_atomic

        record = to_jsonable({**record, "seconds": round(seconds, 2)})
        write_json_atomic(self.path(name), record)
        return record


def _open_study(out: Path, settings: dict, phases, *, resume: bool, device: str, dtype: str) -> _PhaseStore:
    """Checks that need no model (phases, device, the folder and its settings), then the folder itself."""
    from interventions.models.load import check_device
    from interventions.store import write_json_atomic

    unknown = [p for p in phases if p not in PHASES]
    if unknown:
        raise UserError(f"unknown phase {unknown[0]!r}; phases are {', '.join(PHASES)}", field="phases")
    check_device(device, dtype)
    saved = out / "settings.json"
    if out.exists() and any(out.iterdir()):
        if not resume:
            raise UserError(f"{out} is not empty; give --resume to continue it, or a new --out", field="--out")
        if saved.exists() and json.loads(saved.read_text()) != settings:
            raise UserError(f"{out} was made with other settings ({saved}); give a new --out", field="--resume")
    (out / "phases").mkdir(parents=True, exist_ok=True)
    write_json_atomic(saved, settings)
    return _PhaseStore(out / "phases", resume)


def _load_and_estimate(settings: dict, todo: list[str], progress: bool):
    """The model and tokenized traces, and a time estimate of the phases to run from one timed clean forward."""
    t0 = time.perf_counter()
    loaded = _load(settings)
    toks = _tokenized(loaded, settings)
    load_s = time.perf_counter() - t0
    specs = causal_specs(settings["model"], settings["traces"], chat_template=settings["chat_template"],
                         max_traces=settings["max_traces"], max_tokens=settings["max_tokens"],
                         dtype=settings["dtype"], device=settings["device"], seed=settings["seed"])
    t_fwd = _time_forward(loaded, toks)
    per_phase = _n_forwards(specs, len(toks))
    est = {p: per_phase[p] * t_fwd + (load_s if p in CAUSAL_PHASES else 0) for p in todo}
    if progress:
        info(f"{settings['model']} ({loaded.adapter.model_type}, {loaded.dims['layers']} layers): {len(toks)} traces "
             f"of up to {max(t.length for t in toks)} tokens; one clean forward {t_fwd:.2f} s, load {load_s:.1f} s")
        info(f"estimate (upper bound, prefix reuse makes it shorter): {sum(est.values()) / 60:.1f} min for "
             + ", ".join(f"{p} {est[p] / 60:.1f}" for p in todo) + " min")
    return loaded, toks


def _run_phase(name: str, loaded, toks, out: Path, settings: dict, results: dict, *, resume: bool, progress: bool,
               command: str, run_reports: bool) -> dict:
    """One phase's record: detection, the MLP origin, or one causal check's run."""
    if name == "detect":
        return _phase_detect(loaded, toks, out, settings, progress)
    if name == "origin":
        return _phase_origin(loaded, toks, out, results["detect"], progress)
    d = results["detect"]
    # when some sinks lie past the prefix every trace shares, the causal checks target only those
    own = d["shared_prefix_tokens"] > 1 and 0 < d["n_own_text_sinks"] < d["n_secondary"]
    data = causal_specs(settings["model"], settings["traces"], chat_template=settings["chat_template"],
                        max_traces=settings["max_traces"], max_tokens=settings["max_tokens"], dtype=settings["dtype"],
                        device=settings["device"], seed=settings["seed"],
                        min_position=d["shared_prefix_tokens"] if own else None)[name]
    record = _phase_causal(name, data, out, d, resume, progress, command, run_reports)
    if own:
        record["target_note"] = (f"targets: the {d['n_own_text_sinks']} sinks past the "
                                 f"{d['shared_prefix_tokens']}-token prefix every trace shares "
                                 f"(of {d['n_secondary']}); the templated ones repeat one measurement")
    return record


# --------------------------------------------------------------------------------------------
# as a study of experiments/ (kind: reproduce)


def measure_reproduce(result: ReproduceResult) -> dict:
    """The numbers an ``experiments/reproduce`` expectation checks (paths such as ``verdicts.H1``)."""
    ph = result.phases
    d = ph.get("detect") or {}
    o = ph.get("origin") or {}
    levels = sorted([r["l_start"], r["lifetime"]] for r in d.get("level_counts") or [])
    l_starts = {}
    for t in d.get("top3_l_start") or []:
        l_starts[str(t["l_start"])] = t["share"]
    verdicts, hypotheses, costs, skipped = {}, {}, {}, {}
    for h in CAUSAL_PHASES:
        rec = ph.get(h) or {}
        if rec.get("skipped"):
            skipped[h] = rec["skipped"]
            verdicts[h] = "not tested"  # the verdict vocabulary: nothing ran
            continue
        for key, v in (rec.get("verdicts") or {}).items():
            if key.split("/")[0] == h:
                verdicts[key] = v.get("verdict")
                hypotheses[key] = v
        costs[h] = (rec.get("functional_cost") or {}).get("overall")
    swap: dict[str, dict[str, float]] = {}
    for r in (ph.get("H3") or {}).get("swap_rates") or []:
        swap.setdefault(r["site"], {})[str(r["intervened_layer"])] = r["estimate"]
    comp = (ph.get("H4") or {}).get("compensation") or {}
    return {
        "layers": d.get("layers"), "primary_sink_layer": d.get("primary_sink_layer"),
        "n_traces": d.get("n_traces"), "n_secondary": d.get("n_secondary"),
        "modal_l_start": (d.get("top3_l_start") or [{}])[0].get("l_start"), "l_start_shares": l_starts,
        "levels": levels, "tokens": [t["token"] for t in d.get("token_table") or []],
        "shared_prefix_tokens": d.get("shared_prefix_tokens"),
        "units": {"all": d.get("units_all_sinks"), "own_text": d.get("units_own_text_sinks")},
        "origin": o.get("numbers") or {"verdict": "not run", "reason": o.get("skipped")},
        "verdicts": verdicts, "hypotheses": hypotheses, "skipped": skipped,
        "compensation": {k: v for k, v in comp.items() if k not in ("profile",)},
        "swap": swap, "functional_cost": costs, "seconds": round(result.seconds, 1),
    }


def run_reproduce_experiment(exp, settings: dict, out: Path, progress: bool) -> dict:
    """``kind: reproduce`` in :mod:`interventions.studies.experiments`: the whole study into ``out/reproduce``."""
    result = reproduce(settings["model"], settings.get("traces"), out / "reproduce",
                       chat_template=settings.get("chat_template", False), max_traces=settings.get("limit") or 8,
                       max_tokens=settings.get("max_tokens"), dtype=settings.get("dtype", "auto"),
                       device=settings.get("device", "cpu"), seed=settings.get("seed", 0),
                       threads=settings.get("threads"), progress=progress,
                       command=f"intervene experiment {exp.folder}")
    return measure_reproduce(result)
