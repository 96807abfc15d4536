"""Reading a spec file: YAML -> paths resolved -> validated :class:`Spec`, or one :class:`SpecError`
listing every problem, one line each: ``<field path>: <what was given> — <what is allowed>``.

pydantic's own multi-line error dumps never reach the user: :func:`translate_errors` turns
each pydantic error into such a line, and the cross-field checks (target-set names,
``traces: testbed`` vs the model, duplicate conditions) run on the raw data so they are
reported together with the field errors instead of after them.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import SpecError, missing_model_fix
from .schema import (
    _SKIP_CROSS,
    KINDS,
    TARGETS,
    TESTBED_PREFIX,
    TESTBED_TRACES,
    VALIDATOR,
    Detection,
    SecondarySinks,
    Spec,
    absolute_layers,
    condition_problems,
    did_you_mean,
    reference_problems,
    show,
    spec_warnings,
)


class SpecWarning(UserWarning):
    """A spec setting that is valid but probably not meant (e.g. a scale factor of 1)."""


_YAML_HINT = ("fix the YAML near that line: check the indentation, and quote values that contain ': ' "
              "or start with [ { * & ! | > % @")
_NOUNS = {"measures": "measure", "attn_implementation": "attention implementation", "rule": "detection rule",
          "dtype": "dtype", "redirect": "redirect", "site": "site"}
_DISCRIMINATORS = {"interventions": ("kind", KINDS, "kind"), "targets": ("select", TARGETS, "selector")}


# --------------------------------------------------------------------------------------------
# locating fields in the (raw) data


def _fmt(loc: tuple | list) -> str:
    """``('interventions', 0, 'factors')`` -> ``interventions[0].factors``; ``()`` -> ``(top level)``."""
    out = ""
    for seg in loc:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out or "(top level)"


def _get(data: Any, *keys: Any) -> Any:
    for k in keys:
        if isinstance(data, dict):
            data = data.get(k)
        elif isinstance(data, list) and isinstance(k, int) and 0 <= k < len(data):
            data = data[k]
        else:
            return None
    return data


def _model_at(loc: tuple, data: Any) -> type[BaseModel] | None:
    """The spec model that validates the value at ``loc`` (cleaned), if it is a model."""
    if loc == ():
        return Spec
    if loc == ("detection",):
        return Detection
    if len(loc) == 2 and loc[0] in _DISCRIMINATORS:
        key, registry, _ = _DISCRIMINATORS[loc[0]]
        tag = _get(data, loc[0], loc[1], key)
        return registry.get(tag) if isinstance(tag, str) else None
    return None


def _clean(loc: tuple, data: Any) -> tuple:
    """The field path of an error (the registered unions of spec.conditions insert no union-tag segment)."""
    return tuple(loc)


def _field(loc: tuple, data: Any):
    """(field name, FieldInfo) of the innermost model field containing ``loc``, else (None, None)."""
    for k in range(len(loc) - 1, -1, -1):
        if isinstance(loc[k], str):
            model = _model_at(loc[:k], data)
            if model is not None:
                for name, info in model.model_fields.items():
                    if loc[k] in (name, info.alias):
                        return loc[k], info
                return loc[k], None
    return None, None


def _desc(loc: tuple, data: Any) -> str:
    _, info = _field(loc, data)
    text = (info.description or "") if info is not None else ""
    return text.rstrip(".")


def _allowed_keys(model: type[BaseModel]) -> list[str]:
    return [info.alias or name for name, info in model.model_fields.items()]


# --------------------------------------------------------------------------------------------
# pydantic errors -> one line each


def _with_desc(line: str, desc: str) -> str:
    """Append the field's description in parentheses (first letter lowered)."""
    return f"{line} ({desc[0].lower() + desc[1:]})" if desc else line


def _translate(err: dict, data: Any) -> str:
    loc = _clean(err["loc"], data)
    typ, inp, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    path = _fmt(loc)
    desc = _desc(loc, data)

    if "[key]" in loc:
        at = loc.index("[key]")
        return f"{_fmt(loc[:at - 1])}: key {show(loc[at - 1])} is not usable — names must be text"
    if typ == "spec":
        return f"{path}: {ctx.get('msg', err['msg'])}"
    if typ == "missing":
        return f"{path}: missing — add it" + (f": {desc}" if desc else "")
    if typ == "extra_forbidden":
        parent, key = loc[:-1], loc[-1]
        model = _model_at(parent, data)
        allowed = _allowed_keys(model) if model is not None else []
        hint = did_you_mean(str(key), allowed).strip().strip("()")
        if not hint:
            where = ""
            if len(parent) == 2 and parent[0] in _DISCRIMINATORS:
                tag_key = _DISCRIMINATORS[parent[0]][0]
                where = f" for {tag_key}: {_get(data, *parent, tag_key)}"
            hint = f"allowed keys{where}: {', '.join(allowed)}" if allowed else "remove it"
        return f"{_fmt(parent)}: unknown key {show(key)} — {hint}"
    if typ in ("union_tag_invalid", "union_tag_not_found") and len(loc) == 2 and loc[0] in _DISCRIMINATORS:
        key, registry, noun = _DISCRIMINATORS[loc[0]]
        names = list(registry)
        if typ == "union_tag_not_found":
            return f"{path}: no {key} given — add {key}: one of {', '.join(names)}"
        tag = inp.get(key) if isinstance(inp, dict) else ctx.get("tag")
        return (f"{path}.{key}: {show(tag)} is not a known {noun} — use one of {', '.join(names)}"
                f"{did_you_mean(tag, names)}")
    if typ in ("model_attributes_type", "model_type", "dict_type"):
        if len(loc) == 2 and loc[0] == "interventions":
            fix = ("write each intervention as a mapping, "
                   "e.g. - {kind: zero, site: mlp_output, layer: l_start, targets: [sinks]}")
        elif len(loc) == 2 and loc[0] == "targets":
            fix = "write each target set as name: {select: ...}"
        elif loc == ("targets",):
            fix = "write one target set per line, as name: {select: ...}"
        else:
            return _with_desc(f"{path}: {show(inp)} is not a mapping — write it as key: value lines", desc)
        return f"{path}: {show(inp)} is not a mapping — {fix}"
    if typ == "list_type":
        if isinstance(inp, (str, int, float)) and not isinstance(inp, bool):
            item = inp if isinstance(inp, str) and re.match(r"^[A-Za-z0-9_.:/-]+$", inp) else show(inp)
            return f"{path}: {show(inp)} is not a list — write it as [{item}]"
        if isinstance(inp, dict):
            return _with_desc(f"{path}: {show(inp)} is not a list — start each item on its own line with '- '", desc)
        return _with_desc(f"{path}: {show(inp)} is not a list", desc)
    if typ in ("too_short", "too_long"):
        n = ctx.get("min_length") if typ == "too_short" else ctx.get("max_length")
        actual = ctx.get("actual_length")
        if typ == "too_short" and not actual:
            return _with_desc(f"{path}: {show(inp)} is empty — give at least {n}", desc)
        word = "at least" if typ == "too_short" else "at most"
        return _with_desc(f"{path}: {show(inp)} has {actual} item{'s' if actual != 1 else ''} — give {word} {n}",
                          desc)
    if typ in ("int_type", "int_parsing", "int_from_float"):
        return _with_desc(f"{path}: {show(inp)} is not a whole number", desc)
    if typ in ("float_type", "float_parsing", "finite_number"):
        return _with_desc(f"{path}: {show(inp)} is not a number", desc)
    if typ in ("bool_type", "bool_parsing"):
        return _with_desc(f"{path}: {show(inp)} is not true or false", desc)
    if typ == "string_type":
        fix = "put it in quotes" if isinstance(inp, (int, float, bool)) else "give text"
        return _with_desc(f"{path}: {show(inp)} is not text — {fix}", desc)
    if typ in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
        op, key, size = {"greater_than": (">", "gt", "small"), "greater_than_equal": (">=", "ge", "small"),
                         "less_than": ("<", "lt", "large"), "less_than_equal": ("<=", "le", "large")}[typ]
        return _with_desc(f"{path}: {show(inp)} is too {size} — it must be {op} {show(ctx.get(key))}", desc)
    if typ == "literal_error":
        expected = re.findall(r"'((?:[^'\\]|\\.)*)'", str(ctx.get("expected", "")))
        field_name, _ = _field(loc, data)
        noun = _NOUNS.get(field_name, "value")
        return (f"{path}: {show(inp)} is not a known {noun} — use one of {', '.join(expected)}"
                f"{did_you_mean(inp, expected)}")
    first = str(err.get("msg", "invalid value")).strip().splitlines()[0] if err.get("msg") else "invalid value"
    return _with_desc(f"{path}: {show(inp)} — {first[0].lower() + first[1:] if first else first}", desc)


def translate_errors(exc: ValidationError, data: Any) -> list[str]:
    """Turn a pydantic ``ValidationError`` on spec ``data`` into one-line problems."""
    return [_translate(err, data).replace("\n", " ").replace("\r", " ") for err in exc.errors()]


# --------------------------------------------------------------------------------------------
# paths


def _resolve_paths(data: dict, base_dir: Path, check_files: bool) -> list[str]:
    """Resolve ``model`` (when local) and ``traces`` relative to ``base_dir``, in place."""
    problems: list[str] = []
    where = "relative paths are relative to the spec file's folder"
    model = data.get("model")
    if isinstance(model, str) and model.strip() and not model.startswith(TESTBED_PREFIX):
        p = Path(model).expanduser()
        explicit = (model.startswith(("./", "../", "~", "/")) or model in (".", "..") or p.suffix == ".gguf"
                    or p.is_absolute())
        candidate = p if p.is_absolute() else base_dir / p
        if explicit or candidate.exists():
            resolved = candidate.resolve()
            data["model"] = str(resolved)
            if check_files:
                if p.suffix == ".gguf" and not resolved.is_file():
                    problems.append(f"model: {show(model)} does not exist (looked for {resolved}) — give an "
                                    f"existing .gguf file; {where}")
                elif p.suffix != ".gguf" and not resolved.exists():
                    problems.append(f"model: {show(model)} does not exist (looked for {resolved}) — "
                                    f"{missing_model_fix(resolved)}; {where}")
                elif p.suffix != ".gguf" and not resolved.is_dir():
                    problems.append(f"model: {show(model)} is a file — give the model folder (with config.json) "
                                    "or a .gguf file")
        elif check_files and model.count("/") > 1:
            problems.append(f"model: {show(model)} is not an existing path (looked in {base_dir.resolve()}) "
                            "nor a hub id (owner/name)")
    interventions = data.get("interventions")
    if isinstance(interventions, list):  # kinds with file fields (add's direction file) resolve theirs
        for i, iv in enumerate(interventions):
            kind = KINDS.get(iv.get("kind")) if isinstance(iv, dict) and isinstance(iv.get("kind"), str) else None
            if kind is not None:
                fixed, found = kind.resolve_paths(iv, base_dir, check_files)
                interventions[i] = fixed
                problems += [f"interventions[{i}].{p}" for p in found]
    traces = data.get("traces")
    if isinstance(traces, str) and traces.strip() and traces != TESTBED_TRACES:
        p = Path(traces).expanduser()
        resolved = (p if p.is_absolute() else base_dir / p).resolve()
        data["traces"] = str(resolved)
        if check_files and not resolved.is_file():
            extra = did_you_mean(traces, [TESTBED_TRACES]) if "/" not in traces else ""
            problems.append(f"traces: {show(traces)} does not exist (looked for {resolved}) — give a JSONL file "
                            f"or testbed; {where}{extra}")
    return problems


# --------------------------------------------------------------------------------------------
# validation entry points


def _order(problems: list[str], data: dict, first: list[str]) -> list[str]:
    """Dedupe, then order by where the top-level key appears in the file (``first`` leads)."""
    keys = [k for k in data if isinstance(k, str)]

    def rank(line: str) -> int:
        if line in first:
            return -2
        if line.startswith("(top level)"):
            return -1
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)", line)
        return keys.index(m.group(1)) if m and m.group(1) in keys else len(keys)

    return sorted(dict.fromkeys(problems), key=rank)


def validate_spec_data(data: Any, *, base_dir: str | Path | None = None, check_files: bool = False,
                       source_name: str = "spec", raw_text: str | None = None,
                       source_path: Path | None = None, extra_problems: list[str] | None = None) -> Spec:
    """Validate parsed spec data; raise one :class:`SpecError` listing every problem found."""
    problems = list(extra_problems or [])
    if data is None:
        raise SpecError(problems + [f"(top level): {source_name} is empty — a spec needs at least name, model, "
                                    "traces, targets and interventions"])
    if not isinstance(data, dict):
        raise SpecError(problems + [f"(top level): {show(data)} is not a mapping — a spec is key: value lines "
                                    "(name:, model:, traces:, targets:, interventions:)"])
    data = dict(data)
    if isinstance(data.get("interventions"), list):
        data["interventions"] = list(data["interventions"])
    if base_dir is not None:
        problems += _resolve_paths(data, Path(base_dir), check_files)
    spec = None
    try:
        spec = Spec.model_validate(data, context={_SKIP_CROSS: True})
    except ValidationError as exc:
        problems += translate_errors(exc, data)
    problems += reference_problems(data)
    if spec is not None:
        problems += condition_problems(spec)
    if problems:
        raise SpecError(_order(problems, data, list(extra_problems or [])))
    spec._raw_text = raw_text
    spec._source_path = source_path
    spec._warnings = spec_warnings(spec)
    for w in spec._warnings:
        warnings.warn(w, SpecWarning, stacklevel=3)
    return spec


def _yaml_problem(exc: yaml.YAMLError, source_name: str) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).strip().splitlines()[0]
    context = getattr(exc, "context", None)
    cmark = getattr(exc, "context_mark", None)
    if context and cmark is not None and mark is not None and cmark.line != mark.line:
        problem += f" ({context} on line {cmark.line + 1})"
    elif context:
        problem += f" ({context})"
    where = f"{source_name} line {mark.line + 1}" if mark is not None else source_name
    return f"{where}: {problem} — {_YAML_HINT}".replace("\n", " ")


def _duplicate_keys(text: str, source_name: str) -> list[str]:
    """Keys given twice in one mapping (YAML silently keeps the last one)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return []
    problems: list[str] = []

    def walk(node, loc: tuple) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                k = key.value if isinstance(key, yaml.ScalarNode) else None
                if k is not None and k != "<<":
                    if k in seen:
                        where = f"in {_fmt(loc)}" if loc else "at the top level"
                        problems.append(f"{source_name} line {key.start_mark.line + 1}: key {k!r} appears "
                                        f"twice {where} (first on line {seen[k]}) — YAML keeps only the last one; "
                                        "remove or rename one")
                    else:
                        seen[k] = key.start_mark.line + 1
                walk(value, loc + ((k,) if k is not None else ()))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, loc + (i,))

    walk(root, ())
    return problems


def parse_yaml(text: str, source_name: str = "spec.yaml") -> tuple[Any, list[str]]:
    """``yaml.safe_load`` the text; a syntax error raises :class:`SpecError` naming the line.

    Returns the data and any duplicate-key problems (reported with the validation problems).
    """
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError([_yaml_problem(exc, source_name)]) from None
    return data, _duplicate_keys(text, source_name)


def load_spec_text(text: str, base_dir: str | Path = ".", *, source_name: str = "spec.yaml",
                   check_files: bool = True, source_path: str | Path | None = None) -> Spec:
    """Parse and validate spec YAML; paths resolve relative to ``base_dir``.

    Raises :class:`~interventions.errors.SpecError` listing every problem, one line each.
    """
    data, duplicates = parse_yaml(text, source_name)
    return validate_spec_data(data, base_dir=Path(base_dir), check_files=check_files, source_name=source_name,
                              raw_text=text, source_path=Path(source_path) if source_path else None,
                              extra_problems=duplicates)


def load_spec(path: str | Path, *, check_files: bool = True) -> Spec:
    """Load a spec file; the model and traces paths in it resolve relative to its folder."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise SpecError([f"{path}: spec file not found — give the path of a .yaml spec file"])
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError([f"{path}: cannot read the spec file ({type(exc).__name__}) — "
                         "save it as UTF-8 text"]) from None
    return load_spec_text(text, p.resolve().parent, source_name=p.name, check_files=check_files,
                          source_path=p.resolve())


# --------------------------------------------------------------------------------------------
# second stage: against the model's config


def check_against_model(spec: Spec, dims: dict) -> list[str]:
    """Problems only visible once the model config is read (before weights): layer numbers past
    the model's depth, ``max_tokens`` past its positions. Same one-line format; the caller raises.

    ``dims`` is :func:`interventions.models.adapters.model_dims` (``layers``, ``max_positions`` ...).
    """
    n = int(dims["layers"])
    problems: list[str] = []

    def check(path: str, values: list[int]) -> None:
        bad = [v for v in values if v > n - 1]
        if bad:
            verb = "is" if len(bad) == 1 else "are"
            problems.append(f"{path}: {', '.join(map(str, bad))} {verb} out of range — this model has {n} layers: "
                            f"use 0..{n - 1}")

    for name, t in spec.targets.items():
        if isinstance(t, SecondarySinks):
            if t.l_start is not None:
                check(f"targets.{name}.l_start", [t.l_start])
            if t.level is not None:
                check(f"targets.{name}.level", [t.level[0]])
                if t.level[0] <= n - 1 and t.level[0] + t.level[1] > n:
                    problems.append(f"targets.{name}.level: {show(t.level)} runs past the last layer — this model "
                                    f"has {n} layers: l_start + lifetime must be <= {n}")
    for i, iv in enumerate(spec.interventions):
        for f in iv.LAYER_FIELDS:
            check(f"interventions[{i}].{f}", absolute_layers(getattr(iv, f)))
    max_pos = int(dims.get("max_positions") or 0)
    if max_pos > 0 and spec.max_tokens is not None and spec.max_tokens > max_pos:
        problems.append(f"max_tokens: {spec.max_tokens} is more than the model's {max_pos} positions — "
                        f"use at most {max_pos}")
    return problems


# --------------------------------------------------------------------------------------------
# third stage: everything a run reads before its weights (config, tokenizer, traces)


@dataclass
class CheckedInputs:
    """What :func:`check_inputs` read and checked, all without weights."""

    source: Any
    config: Any
    dims: dict
    tokenizer: Any
    traces: list
    device: str
    memory: Any


def spec_trace_records(spec: Spec, truth_folder: str | None) -> list[dict]:
    """Trace records of a spec: its JSONL file, or the planted model's own traces."""
    from .traces import read_trace_records

    if not isinstance(spec.traces, str):  # generated: token ids made with the model's tokenizer later
        from .trace_sources import GeneratedTraces, generated_records

        t = spec.traces
        return generated_records(GeneratedTraces(t.generate, length=t.length, n=t.n, seed=t.seed), n=spec.limit)
    if spec.traces == TESTBED_TRACES:
        from interventions.testbed.planted import load_truth, planted_traces

        texts = planted_traces(load_truth(truth_folder), n=spec.limit or 8, seed=spec.seed, gated=True)
        return [{"text": t} for t in texts]
    return read_trace_records(spec.traces, limit=spec.limit)


def check_inputs(spec: Spec, *, device: str | None = None, force: bool = False) -> CheckedInputs:
    """Every check a spec needs that reads no weights, in the order a run meets them: the runtime
    imports, the device and dtype, the model's config (layers, positions), the trace file, the
    tokenizer (chat template, one-token target strings), the tokenized trace lengths, and the
    memory estimate (``force`` skips it).

    ``intervene validate`` and ``intervene run`` both call this, so validate says "ok" exactly
    when a run would get past its checks. Raises :class:`SpecError` / :class:`UserError`.
    """
    from interventions.models.adapters import model_dims
    from interventions.models.dependencies import require_for_run
    from interventions.models.load import check_device, load_config, load_tokenizer, resolve_dtype, resolve_source
    from interventions.models.memory import check_memory, estimate_memory

    from .target_sets import token_ids_for
    from .traces import check_trace_lengths, traces_from_records

    require_for_run(report=spec.report)
    device = device or spec.device
    check_device(device, spec.dtype)
    source = resolve_source(spec.model, revision=getattr(spec, "revision", None))
    config = load_config(source, trust_remote_code=spec.trust_remote_code)
    dims = model_dims(config)
    problems = check_against_model(spec, dims)
    if problems:
        raise SpecError(problems)
    records = spec_trace_records(spec, source.path)
    tokenizer = load_tokenizer(source, trust_remote_code=spec.trust_remote_code)
    traces = traces_from_records(records, tokenizer, max_tokens=spec.max_tokens, chat_template=spec.chat_template)
    check_trace_lengths(traces, dims)
    for name, target in spec.targets.items():  # a multi-token string fails now, not mid-run
        if getattr(target, "tokens", None):
            token_ids_for(tokenizer, target.tokens, field=f"targets.{name}.tokens")
    memory = estimate_memory(config, dtype=resolve_dtype(config, spec.dtype, device),
                             tokens=max((tr.length for tr in traces), default=1),
                             attn_implementation=spec.attn_implementation)
    check_memory(memory, device, force=force)
    return CheckedInputs(source, config, dims, tokenizer, traces, device, memory)


VALIDATOR[:] = [validate_spec_data]  # Spec.from_dict validates through the loader (see schema.VALIDATOR)
