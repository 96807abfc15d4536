"""Studies: one folder per claim of the paper, run end to end, with the expected results checked.

``experiments/<name>/experiment.yaml``::

    name: ablation
    claim: H1 / Finding 2.1 - secondary sinks are written by the MLP of layer l_start
    paper: what the paper reports, in a sentence or two
    kind: runs                 # one of KINDS: detect | origin | runs | known_answers | streaming | reproduce
    specs: [../../specs/mlp_zero.yaml]     # runs only; or {path: ..., overrides: {...}}
    planted:                   # settings of the planted-model run (the default mode)
      limit: 8
    expect:                    # checked after the planted run; a failure makes the CLI exit 1
      verdicts: {H1: supported}            # exactly one expected verdict per hypothesis
      components: {H4: {"target KL > control KL": not supported}}   # a unique name prefix is enough
      checks:                  # "path op value" on the measured numbers (see MEASURED below)
        - hypotheses.H1.effect <= -0.9
    real:                      # named real-model configurations (``--real [--config NAME]``)
      qwen3-4b-base:
        model: Qwen/Qwen3-4B-Base
        traces: ../../../shared/data/secondary-sinks-paper/aime24_traces_qwen3-4b-base.jsonl
        chat_template: true
        dtype: bfloat16
        device: cuda
        expect: {verdicts: {H1: supported}}   # the paper's result (reported, not enforced)

Settings of a mode (``planted`` or one ``real`` configuration): ``model``, ``traces``, ``limit``,
``seed``, ``max_tokens``, ``chat_template``, ``dtype``, ``device``, ``attn_implementation``,
``trust_remote_code``, ``revision``; plus ``detection`` (detection thresholds), ``origin``
(:class:`~interventions.studies.origin.OriginConfig` fields), ``reference`` (detect: a paper-format
file to compare with, see :mod:`interventions.studies.compare`) and ``spec_overrides`` (runs: merged
into every spec). For ``runs`` the mode settings replace the spec's own; paths in the
experiment file are relative to its folder. The planted mode defaults to ``testbed:planted``
with its own traces (``traces: testbed``).

What each kind measures (the names checks refer to):

* ``detect``: ``n_traces``, ``n_primary``, ``n_secondary``, ``primary_per_trace``,
  ``onset_layers``, ``levels`` (sorted ``[l_start, lifetime]`` pairs), ``level_counts``,
  ``modal_l_start``, ``l_start_shares``, ``tokens`` (most frequent first), ``token_set``
  (sorted), ``token_table``, and with a reference ``compare.*`` (precision, recall,
  level_agreement, layer_offset, ...).
* ``origin``: :func:`interventions.studies.origin.origin_summary_numbers` (``verdict``,
  ``median_mlp_in_cos``, ``median_mlp_out_cos``, ``n_pcs_mapping_to_sink``, ...).
* ``runs``: ``verdicts.H1..H4``, ``components.<H>.<component name>``, ``hypotheses.<H>.*``
  (the full verdict record: effect, ci, p, n, details) and ``stats.<spec name>.*`` (the
  run's ``stats.json``: norm_score, norm_lifetime, compensation, dose_response, ...).
* ``reproduce``: :func:`interventions.studies.reproduce.measure_reproduce` (the whole paper on one model:
  ``layers``, ``primary_sink_layer``, ``n_secondary``, ``modal_l_start``, ``levels``, ``tokens``,
  ``origin.*``, ``verdicts.<key>``, ``hypotheses.<key>.*``, ``compensation.*``, ``swap.<site>.<layer>``,
  ``units.*``, ``functional_cost.<H>.*``).
* ``known_answers`` and ``streaming`` (real models only, :data:`REAL_ONLY_KINDS`): ``models.<config
  name>.summary.*`` (see :func:`interventions.studies.known_answers.run_known_answers_experiment` and
  :func:`interventions.studies.streaming_eval.run_streaming_experiment`).

Output: ``<results>/experiments/<name>/<run id>/experiment.json`` (expected vs measured, every
check with its measured value) next to the folders of what ran (``detect/``, ``origin/``,
``runs/<spec name>/``).
"""

from __future__ import annotations

import copy
import json
import operator
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from interventions.errors import UserError

KINDS = ("detect", "origin", "runs", "known_answers", "streaming", "reproduce")
REAL_ONLY_KINDS = ("known_answers", "streaming")
"""Kinds with no planted run: their default mode runs every real configuration. Their expectations
are the literature's results, so a mismatch is a finding, never a failure of the tool."""
VERDICTS = ("supported", "not supported", "inconclusive", "not testable", "not tested")
SETTINGS = ("model", "traces", "limit", "seed", "max_tokens", "chat_template", "dtype", "device",
            "attn_implementation", "trust_remote_code", "revision")
EXTRAS = ("detection", "origin", "reference", "spec_overrides", "expect", "description", "paper", "threads",
          "window", "keep_first")  # window, keep_first: kind streaming
TOP_KEYS = ("name", "claim", "paper", "kind", "specs", "planted", "expect", "real", "notes", "negative")
PLANTED_DEFAULTS = {"model": "testbed:planted", "traces": "testbed", "limit": 8, "seed": 0, "dtype": "float32",
                    "device": "cpu"}
EXPECT_KEYS = ("verdicts", "components", "checks")

_OPS = {"==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le, ">": operator.gt,
        "<": operator.lt, "in": lambda a, b: a in b, "contains": lambda a, b: b in a}
_CHECK_RE = re.compile(r"^\s*(?P<path>[^\s]+)\s+(?P<op>==|!=|>=|<=|>|<|in|contains)\s+(?P<value>.+?)\s*$")


# --------------------------------------------------------------------------------------------
# the experiment file


@dataclass
class Check:
    """One expectation: the value at ``path`` in the measured numbers, compared with ``op``."""

    text: str
    path: list[str]
    op: str
    expected: Any

    def evaluate(self, measured: dict) -> dict:
        found, actual = _lookup(measured, self.path)
        if not found:
            return {"check": self.text, "expected": self.expected, "op": self.op, "measured": None, "passed": False,
                    "note": "not measured"}
        try:
            passed = bool(_OPS[self.op](actual, self.expected))
        except TypeError:
            passed = False
        return {"check": self.text, "expected": self.expected, "op": self.op, "measured": actual, "passed": passed}


def _lookup(data: Any, path: list[str]) -> tuple[bool, Any]:
    """Follow ``path`` into nested dicts/lists. A segment may be a list index or, for a dict, a key
    or a prefix of exactly one key (component names grow suffixes such as "beyond controls")."""
    for seg in path:
        if isinstance(data, dict) and seg not in data:
            keys = [k for k in data if isinstance(k, str) and k.startswith(seg)]
            if len(keys) == 1:
                seg = keys[0]
        if isinstance(data, dict) and seg in data:
            data = data[seg]
        elif isinstance(data, list) and re.fullmatch(r"-?\d+", seg) and -len(data) <= int(seg) < len(data):
            data = data[int(seg)]
        else:
            return False, None
    return True, data


def parse_check(text: str, *, where: str = "checks") -> Check:
    """``"norm_score.slope > 0"`` -> :class:`Check` (the value is read as YAML: numbers, lists, true)."""
    m = _CHECK_RE.match(str(text))
    if not m:
        raise UserError(f"{where}: {text!r} is not 'path op value' with op one of {', '.join(_OPS)}", field="expect")
    try:
        value = yaml.safe_load(m.group("value"))
    except yaml.YAMLError:
        raise UserError(f"{where}: the value in {text!r} is not valid YAML", field="expect") from None
    return Check(text=str(text).strip(), path=m.group("path").split("."), op=m.group("op"), expected=value)


def expectation_checks(expect: dict | None, *, where: str = "expect") -> list[Check]:
    """The checks an ``expect`` block declares: verdicts, components, then free checks."""
    expect = expect or {}
    if not isinstance(expect, dict):
        raise UserError(f"{where}: must be a mapping with {', '.join(EXPECT_KEYS)}", field="expect")
    unknown = sorted(set(expect) - set(EXPECT_KEYS))
    if unknown:
        raise UserError(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(EXPECT_KEYS)}",
                        field="expect")
    checks = []
    for h, v in (expect.get("verdicts") or {}).items():
        checks.append(_verdict_check(f"{h}", ["verdicts", str(h)], v, where=f"{where}.verdicts.{h}"))
    for h, comps in (expect.get("components") or {}).items():
        for name, v in (comps or {}).items():
            checks.append(_verdict_check(f"{h}: {name}", ["components", str(h), str(name)], v,
                                         where=f"{where}.components.{h}"))
    for i, text in enumerate(expect.get("checks") or []):
        checks.append(parse_check(text, where=f"{where}.checks[{i}]"))
    return checks


def _verdict_check(text: str, path: list[str], value, *, where: str) -> Check:
    if isinstance(value, list):
        # an expectation that accepts several verdicts cannot fail the way the claim can: declare one
        raise UserError(f"{where}: {value} lists several verdicts — expect exactly one (the one the testbed or "
                        "the paper predicts)", field="expect")
    if value not in VERDICTS:
        raise UserError(f"{where}: {value!r} is not a verdict; use one of {', '.join(VERDICTS)}", field="expect")
    return Check(text=f"{text} == {value}", path=path, op="==", expected=value)


@dataclass
class Experiment:
    """A parsed ``experiment.yaml``."""

    name: str
    folder: Path
    kind: str
    claim: str
    paper: str
    specs: list[dict]
    """Each ``{"path": Path, "overrides": dict}``."""
    planted: dict
    expect: dict
    real: dict[str, dict]
    raw: dict = field(default_factory=dict)
    negative: dict = field(default_factory=dict)
    """The negative-control run: planted settings with a testbed where the claim is false
    (``negative: {model: testbed:negative-h1, expect: {verdicts: {H1: not supported}}}``)."""

    @property
    def real_only(self) -> bool:
        """Whether the default run measures real models (``known_answers``, ``streaming``)."""
        return self.kind in REAL_ONLY_KINDS

    def missing_models(self, real: bool | str = False) -> dict[str, str]:
        """Configuration name -> model folder, for the real models the run would load that are not on
        disk (a hub id is not checked: it downloads on first use)."""
        names = list(self.real) if (self.real_only and not real) else (
            [next(iter(self.real)) if real is True else str(real)] if real and self.real else [])
        missing = {}
        for name in names:
            model = str(self.real.get(name, {}).get("model", ""))
            if Path(model).is_absolute() and not (Path(model) / "config.json").is_file():
                missing[name] = model
        return missing

    def mode(self, real: bool | str = False, negative: bool = False) -> tuple[str, dict, dict]:
        """(mode name, settings, expect) of the planted run, the negative control or a real configuration.

        ``real`` is False (planted), True (the first real configuration) or a configuration name.
        """
        if negative:
            if not self.negative:
                raise UserError(f"experiment {self.name} has no negative-control configuration", field="negative")
            settings = {**PLANTED_DEFAULTS, **{k: v for k, v in self.planted.items() if k != "expect"},
                        **{k: v for k, v in self.negative.items() if k != "expect"}}
            return "negative", settings, self.negative.get("expect") or {}
        if not real:
            settings = {**PLANTED_DEFAULTS, **{k: v for k, v in self.planted.items() if k != "expect"}}
            return "planted", settings, self.expect
        if not self.real:
            raise UserError(f"experiment {self.name} has no real-model configuration", field="real")
        name = next(iter(self.real)) if real is True else str(real)
        if name not in self.real:
            raise UserError(f"experiment {self.name} has no real configuration {name!r}; it has "
                            f"{', '.join(self.real)}", field="config")
        cfg = self.real[name]
        return name, {k: v for k, v in cfg.items() if k != "expect"}, cfg.get("expect") or {}


def _resolve(value: str, folder: Path) -> str:
    """A path given in the experiment file, made absolute (hub ids and testbed names pass through)."""
    if not isinstance(value, str) or value == "testbed" or value.startswith("testbed:"):
        return value
    p = Path(value).expanduser()
    looks_like_path = value.startswith(("./", "../", "/", "~")) or p.suffix in (".jsonl", ".gguf", ".json")
    if looks_like_path or (folder / p).exists():
        return str(p if p.is_absolute() else (folder / p).resolve())
    return value


def _check_mode(block: Any, where: str, folder: Path) -> dict:
    if block is None:
        return {}
    if not isinstance(block, dict):
        raise UserError(f"{where}: must be a mapping of settings ({', '.join(SETTINGS)})", field=where)
    unknown = sorted(set(block) - set(SETTINGS) - set(EXTRAS))
    if unknown:
        raise UserError(f"{where}: unknown keys {', '.join(unknown)}; allowed: {', '.join(SETTINGS + EXTRAS)}",
                        field=where)
    out = dict(block)
    for key in ("traces", "model", "reference"):
        if key in out:
            out[key] = _resolve(out[key], folder)
    expectation_checks(out.get("expect"), where=f"{where}.expect")
    return out


def load_experiment(path: str | Path) -> Experiment:
    """Read and check ``experiment.yaml`` (a folder or the file); one UserError line per problem."""
    p = Path(path)
    f = p / "experiment.yaml" if p.is_dir() else p
    if not f.is_file():
        raise UserError(f"{path} has no experiment.yaml; give an experiments/<name> folder", field="experiment")
    try:
        data = yaml.safe_load(f.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise UserError(f"{f}: not valid YAML ({str(exc).splitlines()[0]})", field="experiment") from None
    if not isinstance(data, dict):
        raise UserError(f"{f}: must be a mapping (name:, kind:, expect:, ...)", field="experiment")
    folder = f.resolve().parent
    unknown = sorted(set(data) - set(TOP_KEYS))
    if unknown:
        raise UserError(f"{f}: unknown keys {', '.join(unknown)}; allowed: {', '.join(TOP_KEYS)}", field="experiment")
    kind = data.get("kind")
    if kind not in KINDS:
        raise UserError(f"{f}: kind {kind!r} is not one of {', '.join(KINDS)}", field="kind")
    specs = []
    for i, entry in enumerate(data.get("specs") or []):
        entry = {"path": entry} if isinstance(entry, str) else dict(entry or {})
        if "path" not in entry:
            raise UserError(f"{f}: specs[{i}] needs a path", field="specs")
        sp = (folder / entry["path"]).resolve()
        if not sp.is_file():
            raise UserError(f"{f}: specs[{i}] {entry['path']} does not exist (looked for {sp})", field="specs")
        specs.append({"path": sp, "overrides": dict(entry.get("overrides") or {})})
    if kind == "runs" and not specs:
        raise UserError(f"{f}: kind runs needs at least one spec under specs:", field="specs")
    expectation_checks(data.get("expect"), where="expect")
    real = data.get("real") or {}
    if not isinstance(real, dict) or any(not isinstance(v, dict) for v in real.values()):
        raise UserError(f"{f}: real must map configuration names to settings", field="real")
    return Experiment(name=str(data.get("name") or folder.name), folder=folder, kind=kind,
                      claim=str(data.get("claim", "")), paper=str(data.get("paper", "")), specs=specs,
                      planted=_check_mode(data.get("planted"), "planted", folder), expect=data.get("expect") or {},
                      real={k: _check_mode(v, f"real.{k}", folder) for k, v in real.items()}, raw=data,
                      negative=_check_mode(data.get("negative"), "negative", folder))


def find_experiments(path: str | Path) -> list[Path]:
    """``path`` itself when it holds experiment.yaml, else its sub-folders that do (sorted)."""
    p = Path(path)
    if (p / "experiment.yaml").is_file() or p.is_file():
        return [p]
    found = sorted(d for d in p.iterdir() if (d / "experiment.yaml").is_file()) if p.is_dir() else []
    if not found:
        raise UserError(f"{path} is neither an experiment folder nor a folder of them", field="experiment")
    return found


# --------------------------------------------------------------------------------------------
# running


@dataclass
class ExperimentResult:
    """What one experiment run measured and whether it met its expectations."""

    name: str
    mode: str
    out: Path
    measured: dict
    checks: list[dict]
    passed: bool
    seconds: float
    kind: str = ""
    claim: str = ""
    finding: bool = False
    """A real-model run: its expectations are the literature's results, a mismatch is a finding
    (reported, never a failure); otherwise a testbed run whose expectations decide the exit code."""

    @property
    def failed(self) -> list[dict]:
        return [c for c in self.checks if not c["passed"]]

    @property
    def mode_label(self) -> str:
        """The mode as a reader needs it: a real-only study's default mode runs its real models."""
        return "real models" if self.kind in REAL_ONLY_KINDS and self.mode == "planted" else self.mode

    def to_json(self) -> dict:
        """What ``intervene experiment --json`` prints for this study."""
        return {"name": self.name, "kind": self.kind, "mode": self.mode_label, "claim": self.claim,
                "as_expected": self.passed, "role": "finding" if self.finding else "expectation",
                "seconds": self.seconds, "experiment_json": str(self.out / "experiment.json"), "checks": self.checks}


def _merge(base: dict, extra: dict) -> dict:
    """Deep merge: mappings merge key by key, everything else (lists included) is replaced."""
    out = copy.deepcopy(base)
    for k, v in (extra or {}).items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _load_model(settings: dict):
    from interventions.models.load import load_model

    return load_model(settings["model"], dtype=settings.get("dtype", "auto"), device=settings.get("device", "cpu"),
                      attn_implementation=settings.get("attn_implementation", "sdpa"),
                      trust_remote_code=settings.get("trust_remote_code", False), revision=settings.get("revision"))


def _traces(loaded, settings: dict):
    from interventions.spec.traces import load_traces, traces_from_records

    if settings["traces"] == "testbed":
        if not loaded.source.given.startswith("testbed:"):
            raise UserError("traces: testbed needs a testbed model", field="traces")
        from interventions.testbed.planted import load_truth, planted_traces

        texts = planted_traces(load_truth(loaded.source.path), n=settings.get("limit") or 8,
                               seed=settings.get("seed", 0), gated=True)
        return traces_from_records([{"text": t} for t in texts], loaded.tokenizer,
                                   max_tokens=settings.get("max_tokens"))
    return load_traces(settings["traces"], loaded.tokenizer, limit=settings.get("limit"),
                       max_tokens=settings.get("max_tokens"), chat_template=settings.get("chat_template", False))


def measure_detection(result) -> dict:
    """The numbers a ``detect`` experiment checks, from a :class:`~interventions.detection.job.DetectionResult`."""
    sinks = result.sinks
    sec = sinks[sinks["kind"] == "secondary"]
    n_traces = int(len(result.traces))
    l_counts = sec["l_start"].value_counts()
    modal = int(min(l_counts.index[l_counts == l_counts.max()])) if len(l_counts) else None
    tokens = result.tokens
    return {
        "n_traces": n_traces,
        "n_primary": int((sinks["kind"] == "primary").sum()),
        "n_secondary": int(len(sec)),
        "primary_per_trace": float((sinks["kind"] == "primary").sum() / n_traces) if n_traces else None,
        "onset_layers": sorted({int(x) for x in result.traces["onset_layer"].dropna()}) if n_traces else [],
        "levels": sorted([int(a), int(b)] for a, b in {(r.l_start, r.lifetime) for r in sec.itertuples()}),
        "level_counts": {f"({int(r.l_start)}, {int(r.lifetime)})": int(r.count) for r in result.levels.itertuples()},
        "modal_l_start": modal,
        "l_start_shares": {str(int(k)): float(v / len(sec)) for k, v in l_counts.sort_index().items()},
        "tokens": [str(t) for t in tokens["token"]],
        "token_set": sorted(str(t) for t in tokens["token"]),
        "token_table": [{"token": str(r.token), "token_id": int(r.token_id), "count": int(r.count),
                         "share": float(r.share)} for r in tokens.itertuples()],
    }


def _run_detect(exp: Experiment, settings: dict, out: Path, progress: bool) -> dict:
    from interventions.detection.job import detect
    from interventions.detection.rules import DetectionConfig

    from .compare import compare

    loaded = _load_model(settings)
    traces = _traces(loaded, settings)
    config = DetectionConfig(**(settings.get("detection") or {}))
    result = detect(loaded, traces, out / "detect", config=config, progress=progress,
                    command=f"intervene experiment {exp.folder}")
    measured = measure_detection(result)
    if settings.get("reference"):
        cmp = compare(out / "detect", settings["reference"], out / "compare")
        t = cmp.totals
        measured["compare"] = {k: t[k] for k in ("ours", "reference", "both", "only_ours", "only_reference",
                                                 "precision", "recall", "level_agreement", "level_agreement_raw",
                                                 "token_agreement")}
        measured["compare"]["layer_offset"] = cmp.layer_offset["offset"]
        measured["compare"]["offset_explains"] = cmp.layer_offset["explains"]
    return measured


def _run_origin(exp: Experiment, settings: dict, out: Path, progress: bool) -> dict:
    from interventions.detection.rules import DetectionConfig

    from .origin import OriginConfig, analyze_origin, origin_summary_numbers

    loaded = _load_model(settings)
    traces = _traces(loaded, settings)
    result = analyze_origin(loaded, traces, out / "origin", config=OriginConfig(**(settings.get("origin") or {})),
                            detection=DetectionConfig(**(settings.get("detection") or {})), progress=progress)
    numbers = origin_summary_numbers(result)
    numbers["n_pcs_mapping_to_sink"] = len(numbers["pcs_mapping_to_sink"])
    numbers["reason"] = result.verdict.get("reason")
    return numbers


def spec_data(exp: Experiment, entry: dict, settings: dict, spec_overrides: dict | None = None) -> dict:
    """The spec dict a ``runs`` experiment runs: the file, its entry overrides, the mode settings,
    the mode's ``spec_overrides``, then the caller's ``spec_overrides``."""
    data = yaml.safe_load(entry["path"].read_text(encoding="utf-8"))
    data = _merge(data, entry["overrides"])
    data = _merge(data, {k: v for k, v in settings.items() if k in SETTINGS})
    if settings.get("detection"):
        data = _merge(data, {"detection": settings["detection"]})
    data = _merge(data, settings.get("spec_overrides") or {})
    return _merge(data, spec_overrides or {})


def build_specs(exp: Experiment, settings: dict, spec_overrides: dict | None = None) -> list:
    """The validated specs a ``runs`` experiment will run (raises SpecError before anything runs)."""
    from interventions.spec import Spec

    specs = []
    for entry in exp.specs:
        data = spec_data(exp, entry, settings, spec_overrides)
        specs.append(Spec.from_dict(data, base_dir=entry["path"].parent, check_files=True,
                                    source_name=entry["path"].name))
    return specs


def _run_specs(exp: Experiment, specs: list, out: Path, progress: bool, report: bool) -> dict:
    from interventions.pipeline import analyze_run, run_spec

    verdicts: dict[str, str] = {}
    hypotheses: dict[str, dict] = {}
    stats_by_spec: dict[str, dict] = {}
    runs: dict[str, str] = {}
    for spec in specs:
        run_dir = out / "runs" / spec.name
        run_spec(spec, run_dir=run_dir, progress=progress, report=False,
                 command=f"intervene experiment {exp.folder}")
        stats, _ = analyze_run(run_dir, progress=progress, report=report)
        stats_by_spec[spec.name] = stats
        runs[spec.name] = str(run_dir)
        for h, v in stats.get("verdicts", {}).items():
            if h not in verdicts or (verdicts[h] == "not tested" and v.get("verdict") != "not tested"):
                verdicts[h] = v.get("verdict")
                hypotheses[h] = v
    components = {h: {c["name"]: c["verdict"] for c in v.get("components", [])} for h, v in hypotheses.items()}
    return {"verdicts": verdicts, "components": components, "hypotheses": hypotheses, "stats": stats_by_spec,
            "runs": runs}


def run_experiment(exp: Experiment | str | Path, *, results_root: str | Path = "results", real: bool | str = False,
                   out: str | Path | None = None, overrides: dict | None = None, spec_overrides: dict | None = None,
                   progress: bool = True, report: bool = True, threads: int | None = None,
                   negative: bool = False) -> ExperimentResult:
    """Run one study end to end and check its expectations.

    Args:
        exp: an :class:`Experiment` or its folder.
        results_root: results go to ``<results_root>/experiments/<name>/<run id>/``.
        real: False for the planted model; True or a configuration name for a real model.
        out: exact output folder instead of the one under ``results_root``.
        overrides: settings replacing the mode's (e.g. ``{"limit": 6}`` for a quick run).
        spec_overrides: runs only: merged into every spec last.
        progress: progress bars.
        report: runs only: write each run's report.md with figures (slower).
        threads: torch CPU threads for the duration (None: leave torch's setting).
        negative: run the negative-control configuration (a testbed where the claim is false).

    Returns:
        An :class:`ExperimentResult`; ``experiment.json`` is written in ``out``.

    Example:
        >>> from interventions.studies.experiments import run_experiment
        >>> result = run_experiment("experiments/ablation")
        >>> result.passed, result.measured["verdicts"]
    """
    import torch

    from interventions.models.load import check_device
    from interventions.store import new_run_id, prepare_output_dir, to_jsonable, write_json_atomic

    if not isinstance(exp, Experiment):
        exp = load_experiment(exp)
    mode, settings, expect = exp.mode(real, negative=negative)
    settings = {**settings, **(overrides or {})}
    checks = expectation_checks(expect)
    # Everything checkable without weights fails here, before the output folder exists.
    check_device(settings.get("device", "cpu"), settings.get("dtype", "auto"))
    specs = build_specs(exp, settings, spec_overrides) if exp.kind == "runs" else []
    out = Path(out) if out is not None else Path(results_root) / "experiments" / exp.name / (
        new_run_id() + ("-negative" if negative else ""))
    prepare_output_dir(out)
    threads = threads if threads is not None else settings.get("threads")
    before = torch.get_num_threads()
    t0 = time.perf_counter()
    try:
        if threads:
            torch.set_num_threads(int(threads))
        if exp.kind == "detect":
            measured = _run_detect(exp, settings, out, progress)
        elif exp.kind == "origin":
            measured = _run_origin(exp, settings, out, progress)
        elif exp.kind == "known_answers":
            from .known_answers import run_known_answers_experiment

            measured = run_known_answers_experiment(exp, mode, settings, out, progress, overrides or {})
        elif exp.kind == "streaming":
            from .streaming_eval import run_streaming_experiment

            measured = run_streaming_experiment(exp, mode, settings, out, progress, overrides or {})
        elif exp.kind == "reproduce":
            from .reproduce import run_reproduce_experiment

            measured = run_reproduce_experiment(exp, settings, out, progress)
        else:
            measured = _run_specs(exp, specs, out, progress, report)
    except BaseException:
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise
    finally:
        torch.set_num_threads(before)
    seconds = round(time.perf_counter() - t0, 2)
    measured = to_jsonable(measured)
    results = [c.evaluate(measured) for c in checks]
    passed = all(c["passed"] for c in results)
    record = {
        "name": exp.name, "kind": exp.kind, "claim": exp.claim, "paper": exp.paper, "mode": mode,
        "experiment": str(exp.folder), "settings": to_jsonable({k: v for k, v in settings.items()}),
        "expected": to_jsonable(expect), "checks": results, "passed": passed, "seconds": seconds,
        "threads": threads or before,
        "measured": {k: v for k, v in measured.items() if k != "stats"},
    }
    if "stats" in measured:
        record["stats_files"] = {name: str(Path(path) / "stats.json") for name, path in measured["runs"].items()}
    write_json_atomic(out / "experiment.json", record)
    return ExperimentResult(name=exp.name, mode=mode, out=out, measured=measured, checks=results, passed=passed,
                            seconds=seconds, kind=exp.kind, claim=exp.claim,
                            finding=bool(real) or (exp.real_only and not negative))


def _show(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)


def print_experiment(result: ExperimentResult) -> None:
    """Expected vs measured, one row per check, on stdout (the table rules of every command:
    :func:`interventions.report.tables.show_table`)."""
    from interventions.report.tables import out, show_table

    if result.finding:
        status = "as the literature reports" if result.passed else "differs from the literature (a finding)"
    else:
        status = "as expected" if result.passed else "NOT as expected"
    rows = [[c["check"], _show(c["measured"]) if c.get("note") is None else c["note"], "yes" if c["passed"] else "no"]
            for c in result.checks]
    show_table(f"{result.name} ({result.kind}, {result.mode_label}): {result.claim}", ["expectation", "measured", "ok"],
               rows, caption=f"{status}; {result.seconds:.1f} s; {result.out / 'experiment.json'}")
    m = result.measured
    lines = []
    if result.kind == "detect":
        lines.append(f"  {m['n_traces']} traces: {m['n_primary']} primary, {m['n_secondary']} secondary sinks; "
                     f"levels {m['level_counts']}; tokens " + ", ".join(
                         f"{r['token']!r} {r['share']:.0%}" for r in m["token_table"][:6]))
        if "compare" in m:
            lines.append(f"  vs reference: {m['compare']}")
    for h, v in m.get("hypotheses", {}).items():
        if v.get("verdict") != "not tested":
            lines.append(f"  {h} {v.get('verdict')}: {v.get('reason')}")
    if "reason" in m:
        lines.append(f"  origin {m.get('verdict')}: {m['reason']}")
    for name, why in (m.get("skipped_models") or {}).items():
        lines.append(f"  {name} not measured: {why} (`intervene testbed fetch-gguf` caches it)")
    if lines:
        out.print("\n".join(lines) + "\n", markup=False)
