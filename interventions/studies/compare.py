"""Compare our detected sinks with a reference detection in the paper's format.

Reference format (the paper's ``src/hidden_state_base.py``; e.g.
``../shared/data/secondary-sinks-paper/sink_detection_*.jsonl``), one JSON object per trace::

    {"sample_index": 0, "candidate_sinks": {"589": {"layer": [16, 17, ...], "token_id": 220,
                                                    "sink_type": "secondary"}, ...}, ...}

``layer`` lists the layers where the position's hidden state had |cos| > 0.9 to the BOS state,
counted over ``hidden_states[1:]`` (so layer l is meant to be the output of decoder layer l,
as ours is) and only inside the window where the BOS norm is high. ``sink_type`` is
``bos_sink``, ``secondary`` or ``noise``; one published file also uses ``cliff`` for
sinks that start at the paper's creation layer (DeepSeek-14B: l_start 22), so ``cliff``
counts as secondary by default (:data:`SECONDARY_TYPES`). A reference level is
``(l_start, lifetime)`` = (first listed layer, number of listed layers), as the released code
counts it (``rule: paper-code`` in :mod:`interventions.detection.rules`); when the model's layer count
is known (from our manifest), every reference label is also recomputed from its layer list with
the code's ``sink_labeling_machine`` and the agreement reported (``reference_summary.paper_code_labels``).
Compare like with like: detect with ``--rule paper-code`` (and the paper's chat-template setting);
a folder made with another rule is compared all the same, with a note in ``settings.note``.

Ours: ``sinks.jsonl`` of an ``intervene detect`` folder or ``clean_sinks.jsonl`` of an
``intervene run`` folder. Traces are matched by index (our ``trace`` = their
``sample_index``), sinks by token position. Per trace: sinks found in both, only ours, only
theirs; among those in both, level agreement (same l_start and lifetime) and token-id
agreement (a token-id mismatch at the same position means the two tokenizations differ).

Layer numbering is not assumed to agree: :func:`estimate_layer_offset` looks at the sinks
found in both and reports whether one constant ``reference l_start - our l_start`` explains
them; the level agreement is given both as-is and with that offset applied.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from interventions.detection.rules import paper_code_label
from interventions.errors import UserError

PRIMARY_TYPES = ("bos_sink",)
SECONDARY_TYPES = ("secondary", "cliff")
REF_COLUMNS = ["trace", "position", "token_id", "sink_type", "kind", "l_start", "lifetime", "n_layers", "layers",
               "run", "paper_label"]
OURS_COLUMNS = ["trace", "position", "token_id", "token", "kind", "l_start", "lifetime"]
OFFSET_SHARE = 0.9
"""A layer offset 'explains the data' when at least this share of matched sinks has it."""


@dataclass
class CompareResult:
    """What :func:`compare` found (also ``compare.json`` when an output folder is given)."""

    per_trace: pd.DataFrame
    totals: dict
    layer_offset: dict
    primary: dict
    reference_summary: dict
    ours_summary: dict
    settings: dict = field(default_factory=dict)
    out: Path | None = None

    def to_dict(self) -> dict:
        from interventions.store import to_jsonable

        return to_jsonable({"settings": self.settings, "totals": self.totals, "layer_offset": self.layer_offset,
                            "primary": self.primary, "reference_summary": self.reference_summary,
                            "ours_summary": self.ours_summary,
                            "per_trace": self.per_trace.to_dict(orient="records")})


# --------------------------------------------------------------------------------------------
# reading


def _contiguous_run(layers: list[int]) -> int:
    n = 1
    while n < len(layers) and layers[n] == layers[0] + n:
        n += 1
    return n if layers else 0


def reference_rows(records: list[dict], *, secondary_types=SECONDARY_TYPES, primary_types=PRIMARY_TYPES,
                   model_layers: int | None = None) -> pd.DataFrame:
    """Flatten paper-format records into one row per candidate sink (REF_COLUMNS).

    ``lifetime`` is the number of listed layers (the code's count), ``run`` the contiguous run
    from the first; ``paper_label`` the code's label recomputed from the list and ``model_layers``.
    """
    rows = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("candidate_sinks"), dict):
            raise UserError(f"reference record {i} has no 'candidate_sinks' mapping; is this a sink_detection_*.jsonl "
                            "file in the paper's format?", field="reference")
        trace = int(rec.get("sample_index", i))
        for pos, info in rec["candidate_sinks"].items():
            if not isinstance(info, dict):
                continue
            layers = sorted(int(x) for x in info.get("layer", []))
            stype = str(info.get("sink_type", ""))
            kind = "primary" if stype in primary_types else "secondary" if stype in secondary_types else "other"
            rows.append({"trace": trace, "position": int(pos), "token_id": int(info.get("token_id", -1)),
                         "sink_type": stype, "kind": kind, "l_start": layers[0] if layers else -1,
                         "lifetime": len(layers), "n_layers": len(layers), "layers": layers,
                         "run": _contiguous_run(layers),
                         "paper_label": paper_code_label(len(layers), model_layers) if model_layers else None})
    return pd.DataFrame(rows, columns=REF_COLUMNS)


def read_reference(path: str | Path, **kw) -> pd.DataFrame:
    """Read a paper-format reference file (see the module docstring) into REF_COLUMNS rows."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"reference file {path} does not exist", field="reference")
    records = []
    for lineno, line in enumerate(p.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path} line {lineno} is not JSON ({exc.msg})", field="reference") from None
    if not records:
        raise UserError(f"reference file {path} is empty", field="reference")
    return reference_rows(records, **kw)


def sinks_file(path: str | Path) -> Path:
    """``sinks.jsonl`` of a detect folder, ``clean_sinks.jsonl`` of a run folder, or the file itself."""
    p = Path(path)
    if p.is_file():
        return p
    for name in ("sinks.jsonl", "clean_sinks.jsonl"):
        if (p / name).is_file():
            return p / name
    raise UserError(f"{path} has neither sinks.jsonl (an `intervene detect` folder) nor clean_sinks.jsonl "
                    "(an `intervene run` folder)", field="ours")


def read_ours(path: str | Path) -> pd.DataFrame:
    """Our sinks (OURS_COLUMNS plus whatever else the file has) from a detect or run folder."""
    f = sinks_file(path)
    if f.stat().st_size == 0:
        return pd.DataFrame(columns=OURS_COLUMNS)
    df = pd.read_json(f, lines=True)
    missing = [c for c in ("trace", "position", "kind", "l_start", "lifetime") if c not in df.columns]
    if missing:
        raise UserError(f"{f} lacks columns {', '.join(missing)}; is it a sinks file written by this tool?",
                        field="ours")
    if "token_id" not in df.columns:
        df["token_id"] = -1
    return df


def to_reference_records(sinks: pd.DataFrame, *, n_traces: int | None = None) -> list[dict]:
    """Our sinks in the paper's format (primary -> ``bos_sink``, secondary -> ``secondary``).

    ``layers`` is our sink's layer list (``l_start .. l_start + lifetime - 1`` when the table has
    no ``layers`` column). Traces with no sink still get a record when ``n_traces`` is given.
    """
    traces = sorted(set(int(t) for t in sinks["trace"])) if len(sinks) else []
    if n_traces is not None:
        traces = sorted(set(traces) | set(range(n_traces)))
    out = []
    for t in traces:
        cand = {}
        for r in sinks[sinks["trace"] == t].itertuples():
            stype = {"primary": "bos_sink", "secondary": "secondary"}.get(r.kind, str(r.kind))
            layers = getattr(r, "layers", None)
            if not isinstance(layers, list) or len(layers) != int(r.lifetime):
                layers = list(range(int(r.l_start), int(r.l_start) + int(r.lifetime)))
            cand[str(int(r.position))] = {"layer": [int(x) for x in layers], "token_id": int(r.token_id),
                                          "sink_type": stype}
        out.append({"candidate_sinks": cand, "sample_index": t})
    return out


def write_reference(sinks: pd.DataFrame, path: str | Path, *, n_traces: int | None = None) -> Path:
    """Write :func:`to_reference_records` as JSONL."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text("".join(json.dumps(r) + "\n" for r in to_reference_records(sinks, n_traces=n_traces)),
                 encoding="utf-8")
    return p


# --------------------------------------------------------------------------------------------
# comparing


def estimate_layer_offset(matched: pd.DataFrame, *, share: float = OFFSET_SHARE) -> dict:
    """Does one constant ``reference l_start - our l_start`` explain the sinks found in both?

    Args:
        matched: rows with ``l_start_ours`` and ``l_start_ref``.
        share: fraction of matched sinks that must share the offset.

    Returns:
        ``{"n", "offset", "share", "constant", "explains", "counts"}``: ``offset`` is the
        most common difference (ties: the one nearest 0), ``constant`` whether every matched
        sink has it, ``explains`` whether at least ``share`` of them do.
    """
    if not len(matched):
        return {"n": 0, "offset": None, "share": None, "constant": False, "explains": False, "counts": {}}
    d = (matched["l_start_ref"].astype(int) - matched["l_start_ours"].astype(int)).tolist()
    counts = Counter(d)
    top = max(counts.values())
    offset = min((k for k, v in counts.items() if v == top), key=lambda k: (abs(k), k))
    frac = counts[offset] / len(d)
    return {"n": len(d), "offset": int(offset), "share": float(frac), "constant": len(counts) == 1,
            "explains": bool(frac >= share), "counts": {int(k): int(v) for k, v in sorted(counts.items())}}


def _match(ours: pd.DataFrame, ref: pd.DataFrame) -> pd.DataFrame:
    a = ours[["trace", "position", "token_id", "l_start", "lifetime"]].rename(
        columns={"token_id": "token_id_ours", "l_start": "l_start_ours", "lifetime": "lifetime_ours"})
    b = ref[["trace", "position", "token_id", "l_start", "lifetime"]].rename(
        columns={"token_id": "token_id_ref", "l_start": "l_start_ref", "lifetime": "lifetime_ref"})
    return a.merge(b, on=["trace", "position"], how="outer", indicator=True)


def compare_tables(ours: pd.DataFrame, ref: pd.DataFrame, *, kind: str = "secondary", layer_offset: int = 0,
                   traces: list[int] | None = None) -> tuple[pd.DataFrame, dict, dict]:
    """Per-trace and total agreement of one kind of sink (``secondary`` or ``primary``).

    Args:
        ours: our sinks (``kind`` column: primary / secondary / noise).
        ref: :func:`reference_rows` output (``kind`` column: primary / secondary / other).
        kind: which sinks to compare.
        layer_offset: subtract this from reference layers before comparing levels
            (the level agreement without any offset is always reported too).
        traces: traces to compare (a trace with no sink on either side still gets a row);
            default: every trace that has a sink on either side. :func:`compare` passes the
            traces both sides cover.

    Returns:
        ``(per_trace, totals, offset)``.
    """
    o = ours[ours["kind"] == kind]
    r = ref[ref["kind"] == kind]
    if traces is not None:
        o = o[o["trace"].isin(traces)]
        r = r[r["trace"].isin(traces)]
    m = _match(o, r)
    both = m[m["_merge"] == "both"].copy()
    both["level_raw"] = (both["l_start_ours"] == both["l_start_ref"]) & (both["lifetime_ours"] == both["lifetime_ref"])
    both["level"] = ((both["l_start_ours"] + layer_offset) == both["l_start_ref"]) & \
        (both["lifetime_ours"] == both["lifetime_ref"])
    both["token"] = both["token_id_ours"] == both["token_id_ref"]
    rows = []
    for t in (traces if traces is not None else sorted(set(m["trace"]))):
        mt = m[m["trace"] == t]
        bt = both[both["trace"] == t]
        rows.append({"trace": int(t), "ours": int((mt["_merge"] != "right_only").sum()),
                     "reference": int((mt["_merge"] != "left_only").sum()), "both": int(len(bt)),
                     "only_ours": int((mt["_merge"] == "left_only").sum()),
                     "only_reference": int((mt["_merge"] == "right_only").sum()),
                     "level_agree": int(bt["level"].sum()), "level_agree_raw": int(bt["level_raw"].sum()),
                     "token_agree": int(bt["token"].sum())})
    per_trace = pd.DataFrame(rows, columns=["trace", "ours", "reference", "both", "only_ours", "only_reference",
                                            "level_agree", "level_agree_raw", "token_agree"])
    sums = {c: int(per_trace[c].sum()) for c in per_trace.columns if c != "trace"}
    n_both = sums["both"]
    totals = {**sums,
              "precision": sums["both"] / sums["ours"] if sums["ours"] else None,
              "recall": sums["both"] / sums["reference"] if sums["reference"] else None,
              "level_agreement": sums["level_agree"] / n_both if n_both else None,
              "level_agreement_raw": sums["level_agree_raw"] / n_both if n_both else None,
              "token_agreement": sums["token_agree"] / n_both if n_both else None,
              "levels_ours": _level_counts(o), "levels_reference": _level_counts(r)}
    return per_trace, totals, estimate_layer_offset(both)


def _level_counts(df: pd.DataFrame) -> dict[str, int]:
    counts = Counter(zip(df["l_start"].astype(int), df["lifetime"].astype(int)))
    return {f"({a}, {b})": int(n) for (a, b), n in sorted(counts.items())}


def _summary(df: pd.DataFrame, type_col: str) -> dict:
    return {"traces": int(df["trace"].nunique()) if len(df) else 0,
            "by_type": {str(k): int(v) for k, v in df[type_col].value_counts().sort_index().items()},
            "secondary_levels": _level_counts(df[df["kind"] == "secondary"]),
            "secondary_token_ids": {int(k): int(v) for k, v in
                                    df.loc[df["kind"] == "secondary", "token_id"].value_counts().items()}}


def compare(ours_path: str | Path, reference_path: str | Path, out: str | Path | None = None, *,
            layer_offset: int | str = "auto", secondary_types=SECONDARY_TYPES, n_traces: int | None = None
            ) -> CompareResult:
    """Match our sinks (detect or run folder) against a paper-format reference file.

    Args:
        ours_path: a detect folder (``sinks.jsonl``), run folder (``clean_sinks.jsonl``) or sinks file.
        reference_path: the paper-format JSONL.
        out: folder for ``compare.json`` (None: nothing written).
        layer_offset: ``auto`` applies the offset found by :func:`estimate_layer_offset` when it
            explains the data (else 0); an int applies that offset. The raw agreement (offset 0)
            is always reported as well.
        secondary_types: reference ``sink_type`` values counted as secondary sinks.
        n_traces: how many traces our run covered; default: read from the folder's
            ``traces.csv``/manifest when there is one, else the traces our sinks mention.

    Example:
        >>> from interventions.studies.compare import compare
        >>> result = compare("results/detect-qwen3", "../shared/data/secondary-sinks-paper/"
        ...                  "sink_detection_qwen3-4b-base.jsonl")
        >>> result.totals["recall"], result.layer_offset
    """
    ours = read_ours(ours_path)
    facts = _our_facts(Path(ours_path))
    ref = read_reference(reference_path, secondary_types=tuple(secondary_types), model_layers=facts["n_layers"])
    covered = _our_traces(Path(ours_path), ours, n_traces)
    ref_traces = sorted(set(int(t) for t in ref["trace"]))
    traces = sorted(set(covered) & set(ref_traces))
    if not traces:
        raise UserError(f"no trace is in both: ours cover {_span(covered)}, the reference {_span(ref_traces)}; "
                        "traces are matched by index (ours) = sample_index (reference)", field="reference")
    # First pass without an offset, to estimate it; then apply it when asked.
    _, _, offset = compare_tables(ours, ref, kind="secondary", traces=traces)
    if layer_offset == "auto":
        applied = offset["offset"] if offset["explains"] and offset["offset"] else 0
    else:
        try:
            applied = int(layer_offset)
        except (TypeError, ValueError):
            raise UserError(f"layer_offset {layer_offset!r} is not an integer or 'auto'",
                            field="layer_offset") from None
    per_trace, totals, offset = compare_tables(ours, ref, kind="secondary", layer_offset=applied, traces=traces)
    p_trace, p_totals, p_offset = compare_tables(ours, ref, kind="primary", layer_offset=applied, traces=traces)
    offset = {**offset, "applied": applied, "rule": f"a constant offset explains the data when >= "
              f"{OFFSET_SHARE:.0%} of the sinks found in both have it; reference l_start = ours + offset",
              "primary_onset": p_offset}
    result = CompareResult(
        per_trace=per_trace, totals=totals, layer_offset=offset,
        primary={k: p_totals[k] for k in ("ours", "reference", "both", "only_ours", "only_reference", "precision",
                                          "recall", "token_agreement")},
        reference_summary={**_summary(ref[ref["trace"].isin(traces)], "sink_type"),
                           "paper_code_labels": label_agreement(ref, secondary_types=tuple(secondary_types))},
        ours_summary=_summary(ours[ours["trace"].isin(traces)].assign(sink_type=lambda d: d["kind"]), "sink_type"),
        settings={"ours": str(sinks_file(ours_path)), "reference": str(reference_path), "our_rule": facts["rule"],
                  "n_layers": facts["n_layers"], "note": _rule_note(facts["rule"]),
                  "secondary_types": list(secondary_types), "layer_offset": layer_offset, "traces": traces,
                  "traces_only_ours": sorted(set(covered) - set(ref_traces)),
                  "traces_only_reference": sorted(set(ref_traces) - set(covered))},
        out=Path(out) if out is not None else None)
    if out is not None:
        from interventions.store import write_json_atomic

        Path(out).mkdir(parents=True, exist_ok=True)
        write_json_atomic(Path(out) / "compare.json", result.to_dict())
    return result


def label_agreement(ref: pd.DataFrame, *, secondary_types=SECONDARY_TYPES) -> dict:
    """How many reference labels the released code's labelling reproduces from the layer lists
    (``secondary_types`` all count as ``secondary``); None when the layer count is unknown."""
    known = ref[ref["paper_label"].notna()] if "paper_label" in ref else ref.iloc[:0]
    if not len(known):
        return {"n": 0, "agree": 0, "share": None}
    given = known["sink_type"].map(lambda t: "secondary" if t in secondary_types else t)
    agree = int((given == known["paper_label"]).sum())
    return {"n": int(len(known)), "agree": agree, "share": agree / len(known)}


def _our_facts(path: Path) -> dict:
    """Layer count and detection rule from our folder's manifest (None when unknown)."""
    folder = path if path.is_dir() else path.parent
    facts = {"n_layers": None, "rule": None}
    if (folder / "manifest.json").is_file():
        m = json.loads((folder / "manifest.json").read_text())
        settings = m.get("settings", {})
        model = settings.get("model") or m.get("model") or {}
        detection = settings.get("detection") or m.get("detection") or {}
        facts["n_layers"] = model.get("n_layers")
        facts["rule"] = detection.get("rule")
    return facts


def _rule_note(rule: str | None) -> str:
    if rule in ("paper-code", "legacy"):
        return ""
    return (f"ours were detected with rule {rule or 'unknown'}; the reference was written by the paper's released "
            "code: detect with --rule paper-code to compare like with like")


def _span(traces: list[int]) -> str:
    return f"{len(traces)} traces ({min(traces)}-{max(traces)})" if traces else "no traces"


def _our_traces(path: Path, ours: pd.DataFrame, n_traces: int | None) -> list[int]:
    if n_traces is not None:
        return list(range(n_traces))
    folder = path if path.is_dir() else path.parent
    if (folder / "traces.csv").is_file():
        t = pd.read_csv(folder / "traces.csv")
        if "trace" in t.columns and len(t):
            return sorted(int(x) for x in t["trace"])
    if (folder / "manifest.json").is_file():
        total = json.loads((folder / "manifest.json").read_text()).get("traces_total")
        if isinstance(total, int):
            return list(range(total))
    return sorted(set(int(t) for t in ours["trace"])) if len(ours) else []


def print_compare(result: CompareResult, *, max_rows: int = 40) -> None:
    """Per trace, found in both / only ours / only reference / agreement, and totals, on stdout
    (the table rules of every command: :func:`interventions.report.tables.show_table`).

    With more than 20 traces only traces holding a sink on either side are listed (at most ``max_rows``).
    """
    from interventions.report.tables import out, show_table

    t = result.totals
    rows = result.per_trace
    shown = rows if len(rows) <= 20 else rows[(rows["ours"] > 0) | (rows["reference"] > 0)].head(max_rows)
    table = [[r.trace, r.ours, r.reference, r.both, r.only_ours, r.only_reference, r.level_agree, r.token_agree]
             for r in shown.itertuples()]
    table.append(["total", t["ours"], t["reference"], t["both"], t["only_ours"], t["only_reference"],
                  t["level_agree"], t["token_agree"]])
    columns = ["trace", "ours", "ref", "both", "only ours", "only ref", "level =", "token ="]
    show_table("secondary sinks: ours vs reference", columns, table, right=tuple(columns),
               caption="matched by (trace, position); level = same (l_start, lifetime)"
                       + (f" after offset {result.layer_offset['applied']:+d}" if result.layer_offset["applied"]
                          else ""))

    def pct(x):
        return "-" if x is None else f"{x:.0%}"

    off = result.layer_offset
    lines = [f"precision {pct(t['precision'])}, recall {pct(t['recall'])}, level agreement "
             f"{pct(t['level_agreement'])} (raw {pct(t['level_agreement_raw'])}), token agreement "
             f"{pct(t['token_agreement'])}"]
    if off["n"]:
        verdict = ("one constant offset explains every matched sink" if off["constant"] else
                   "explains the data" if off["explains"] else "no single offset explains the data")
        lines.append(f"layer offset (reference l_start - ours): {off['offset']:+d} on {off['share']:.0%} of "
                     f"{off['n']} matched sinks ({verdict}); distribution {off['counts']}")
    p = result.primary
    lines.append(f"primary sinks: {p['both']} in both, {p['only_ours']} only ours, {p['only_reference']} only "
                 "reference")
    lines.append(f"levels: ours {t['levels_ours']}, reference {t['levels_reference']}")
    labels = result.reference_summary.get("paper_code_labels", {})
    if labels.get("n"):
        lines.append(f"reference labels reproduced by the paper's labelling (L = {result.settings.get('n_layers')}): "
                     f"{labels['agree']}/{labels['n']} ({labels['share']:.0%})")
    if result.settings.get("note"):
        lines.append(f"note: {result.settings['note']}")
    out.print("\n".join(lines), markup=False)
