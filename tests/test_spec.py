"""The declarative spec: validation, one-line error messages, condition expansion, round trips."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from interventions.errors import SpecError
from interventions.spec import (
    KINDS,
    MEASURES,
    SITES,
    TARGETS,
    Condition,
    Spec,
    SpecWarning,
    check_against_model,
    expand_conditions,
    load_spec,
    load_spec_text,
    resolve_layers,
    spec_json_schema,
)

BAD_SPECS = Path(__file__).parent / "data" / "bad_specs"

EXAMPLE = """\
name: norm_scale                       # results go to results/<name>/<run id>/
description: Scale the l_start MLP output of sub-threshold tokens and real sinks.
model: testbed:planted                 # hub id, local folder, .gguf file, testbed:planted, testbed:planted-llama
traces: testbed                        # a JSONL file (path relative to the spec file) or `testbed` (the planted model's own traces)
limit: 4                               # first N traces (optional)
max_tokens: 256                        # truncate longer traces, with a warning (optional, >= 2)
chat_template: false
dtype: float32                         # auto | float32 | bfloat16 | float16
device: cpu                            # cpu | cuda | cuda:N | auto
attn_implementation: sdpa              # sdpa | eager
trust_remote_code: false
seed: 0
detection:                             # all optional; defaults shown
  cos_threshold: 0.95
  norm_ratio: 5.0
  min_lifetime: 1
  rule: default                        # default | legacy (paper's |cos|>0.9, 4 < lifetime < L-15)
targets:                               # named target sets, resolved per trace from the clean run
  sinks: {select: secondary_sinks}                       # optional filters: level: [l_start, lifetime], l_start: int, tokens: [..]
  weak: {select: tokens, tokens: [" ~"]}                  # strings or ids
  others: {select: same_token_non_sinks}
  bos: {select: primary_sinks}
  fixed: {select: positions, positions: [5, 9, -1]}
  ctrl: {select: matched_controls, match: sinks, seed: 0} # random non-sink positions matched in count to target set `match`
interventions:
  - kind: scale
    site: mlp_output                   # mlp_output | attention_output | block_output
    layer: l_start                     # int, list of ints, {from: a, to: b} (inclusive range), or l_start (per sink from detection)
    targets: [weak, others]            # names from `targets`
    factors: [2, 5, 10]                # each factor is its own condition; > 0, not 1... (0 is an error suggesting `zero`)
    controls: ctrl                     # optional target set used as control for this intervention
  - kind: zero
    site: mlp_output
    layer: l_start
    targets: [sinks]
    controls: ctrl
  - kind: mean_swap
    site: [block_output, attention_output, mlp_output]   # one site or a list
    layers: {from: 0, to: l_start}     # one condition per layer; `to: l_start` allowed
    targets: [sinks]
  - kind: attention_mask
    layers: [5, 6, 7]                  # or {from:, to:} or `sink_lifetime` (the layers where each target is a sink)
    targets: [sinks]
    redirect: none                     # none | bos
measures: [sinks, sink_score, kl, delta_nll, primary_sink_score]   # optional; default all. allowed: sinks, sink_score, hidden, kl, delta_nll, primary_sink_score
report: true
"""

MINIMAL = """\
name: minimal
model: testbed:planted
traces: testbed
targets:
  sinks: {select: secondary_sinks}
interventions:
  - kind: zero
    site: mlp_output
    layer: l_start
    targets: [sinks]
"""


def _example() -> Spec:
    return load_spec_text(EXAMPLE, ".")


# --------------------------------------------------------------------------------------------
# the example


def test_example_validates():
    spec = _example()
    assert spec.name == "norm_scale"
    assert spec.model == "testbed:planted" and spec.traces == "testbed"
    assert spec.limit == 4 and spec.max_tokens == 256 and spec.dtype == "float32"
    assert list(spec.targets) == ["sinks", "weak", "others", "bos", "fixed", "ctrl"]
    assert spec.targets["weak"].tokens == [" ~"]
    assert spec.targets["fixed"].positions == [5, 9, -1]
    assert spec.targets["ctrl"].match == "sinks"
    assert [iv.kind for iv in spec.interventions] == ["scale", "zero", "mean_swap", "attention_mask"]
    assert spec.interventions[0].factors == [2.0, 5.0, 10.0]
    assert spec.measures == ["sinks", "sink_score", "kl", "delta_nll", "primary_sink_score"]
    assert spec.raw_text == EXAMPLE
    assert spec.warnings == []
    assert len(spec.spec_hash) == 16 and int(spec.spec_hash, 16) >= 0


def test_example_conditions():
    conds = expand_conditions(_example())
    ids = [c.id for c in conds]
    # scale: 3 factors; zero: 1; mean_swap: 3 sites x (l_start, l_start-1 .. l_start-8); attention_mask: 1
    assert len(conds) == 3 + 1 + 3 * 9 + 1 == 32
    assert len(set(ids)) == len(ids)
    assert ids[:4] == ["scale.mlp_output.l_start.x2", "scale.mlp_output.l_start.x5",
                       "scale.mlp_output.l_start.x10", "zero.mlp_output.l_start"]
    assert "mean_swap.block_output.l_start" in ids
    assert "mean_swap.attention_output.l_start-8" in ids
    assert "mean_swap.mlp_output.l_start-9" not in ids
    assert ids[-1] == "attention_mask.L5+6+7.redirect-none"

    x5 = conds[1]
    assert isinstance(x5, Condition)
    assert (x5.kind, x5.site, x5.layer, x5.factor) == ("scale", "mlp_output", "l_start", 5.0)
    assert (x5.targets, x5.controls, x5.redirect, x5.intervention) == (["weak", "others"], "ctrl", None, 0)
    swap = next(c for c in conds if c.id == "mean_swap.attention_output.l_start-3")
    assert swap.layer == "l_start-3" and swap.params == {"offset": 3, "min_layer": 0}
    assert swap.layers_for(l_start=5) == [2] and swap.layers_for(l_start=2) == []
    mask = conds[-1]
    assert (mask.site, mask.layer, mask.redirect, mask.factor) == (None, [5, 6, 7], "none", None)
    json.dumps([c.to_dict() for c in conds])


def test_condition_ids_for_other_layer_forms():
    spec = load_spec_text(MINIMAL.replace("layer: l_start", "layer: {from: 0, to: 3}") + """\
  - kind: mean_swap
    site: attention_output
    layers: {from: 2, to: 4}
    targets: [sinks]
  - kind: attention_mask
    layers: sink_lifetime
    targets: [sinks]
    redirect: bos
  - kind: scale
    site: block_output
    layer: 7
    factors: [0.5]
    targets: [sinks]
""", ".")
    conds = expand_conditions(spec)
    assert [c.id for c in conds] == [
        "zero.mlp_output.L0-3",
        "mean_swap.attention_output.L2", "mean_swap.attention_output.L3", "mean_swap.attention_output.L4",
        "attention_mask.sink_lifetime.redirect-bos",
        "scale.block_output.L7.x0.5",
    ]
    assert conds[0].layer == [0, 1, 2, 3] and conds[1].layer == 2
    assert conds[4].layers_for(l_start=3, lifetime=4) == [4, 5, 6, 7]  # attention layers reading the sink


def test_colliding_condition_ids_get_target_suffix():
    spec = load_spec_text(MINIMAL.replace("  sinks: {select: secondary_sinks}\n",
                                          "  sinks: {select: secondary_sinks}\n  bos: {select: primary_sinks}\n")
                          + "  - {kind: zero, site: mlp_output, layer: l_start, targets: [bos]}\n", ".")
    assert [c.id for c in expand_conditions(spec)] == ["zero.mlp_output.l_start.sinks", "zero.mlp_output.l_start.bos"]


def test_resolve_layers():
    assert resolve_layers(3) == [3]
    assert resolve_layers([1, 2]) == [1, 2]
    assert resolve_layers("l_start", l_start=6) == [6]
    assert resolve_layers("l_start-2", l_start=6) == [4]
    assert resolve_layers("l_start-2", l_start=6, min_layer=5) == []
    assert resolve_layers("sink_lifetime", l_start=2, lifetime=3) == [3, 4, 5]
    with pytest.raises(ValueError):
        resolve_layers("l_start")


# --------------------------------------------------------------------------------------------
# bad specs


def _bad_specs() -> list[Path]:
    return sorted(BAD_SPECS.glob("*.yaml"))


def test_enough_bad_specs():
    assert len(_bad_specs()) >= 15


@pytest.mark.parametrize("path", _bad_specs(), ids=lambda p: p.stem)
def test_bad_spec(path: Path):
    first = path.read_text(encoding="utf-8").splitlines()[0]
    assert first.startswith("# expect: "), f"{path.name} needs a first line '# expect: <substring>'"
    expected = first[len("# expect: "):]
    with pytest.raises(SpecError) as info:
        load_spec(path)
    err = info.value
    assert err.problems, "a SpecError must list its problems"
    for problem in err.problems:
        assert "\n" not in problem and "\r" not in problem, problem
        assert problem.strip() == problem and problem
        assert "validation error" not in problem and "[type=" not in problem, problem
    assert str(err) == "\n".join(err.problems)
    assert expected in str(err), f"expected {expected!r} in:\n{err}"


def test_three_mistakes_reported_together():
    text = (MINIMAL.replace("name: minimal", "name: bad/name")
            .replace("kind: zero", "kind: scael")
            + "measures: [kl, klx]\n")
    with pytest.raises(SpecError) as info:
        load_spec_text(text, ".")
    problems = info.value.problems
    assert len(problems) == 3, problems
    assert problems[0].startswith("name: 'bad/name' is not a safe folder name")
    assert problems[1].startswith("interventions[0].kind: 'scael' is not a known kind")
    assert problems[1].endswith("(did you mean 'scale'?)")
    assert problems[2].startswith("measures[1]: 'klx' is not a known measure")


def test_field_and_cross_field_problems_are_collected_together():
    text = MINIMAL.replace("layer: l_start", "layer: -1").replace("targets: [sinks]", "targets: [sinkz]")
    with pytest.raises(SpecError) as info:
        load_spec_text(text, ".")
    joined = str(info.value)
    assert "interventions[0].layer: -1 is not a layer" in joined
    assert "interventions[0].targets[0]: 'sinkz' is not a defined target set" in joined


def test_factor_one_warns():
    text = MINIMAL + "  - {kind: scale, site: mlp_output, layer: 3, factors: [1, 2], targets: [sinks]}\n"
    with pytest.warns(SpecWarning, match="identity"):
        spec = load_spec_text(text, ".")
    assert any("factors[0]: 1 leaves the output unchanged" in w for w in spec.warnings)


def test_direct_model_validate_runs_cross_checks():
    data = yaml.safe_load(MINIMAL.replace("targets: [sinks]", "targets: [nope]"))
    with pytest.raises(ValidationError, match="not a defined target set"):
        Spec.model_validate(data)
    with pytest.raises(SpecError):
        Spec.from_dict(data)
    assert Spec.from_dict(yaml.safe_load(MINIMAL)).name == "minimal"


# --------------------------------------------------------------------------------------------
# paths


def test_paths_resolve_relative_to_spec_file(tmp_path: Path):
    (tmp_path / "specs").mkdir()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "traces.jsonl").write_text('{"text": "hi"}\n')
    (tmp_path / "specs" / "model").mkdir()
    (tmp_path / "specs" / "model" / "config.json").write_text("{}")
    text = (MINIMAL.replace("model: testbed:planted", "model: model")
            .replace("traces: testbed", "traces: ../data/traces.jsonl"))
    spec_file = tmp_path / "specs" / "q.yaml"
    spec_file.write_text(text)
    spec = load_spec(spec_file)
    assert spec.source_path == spec_file.resolve()
    assert spec.traces == str((tmp_path / "data" / "traces.jsonl").resolve())
    assert spec.model == str((tmp_path / "specs" / "model").resolve())
    # a hub id stays a hub id
    spec_file.write_text(text.replace("model: model", "model: Qwen/Qwen2.5-Math-1.5B"))
    assert load_spec(spec_file).model == "Qwen/Qwen2.5-Math-1.5B"


def test_missing_spec_file(tmp_path: Path):
    with pytest.raises(SpecError, match="spec file not found"):
        load_spec(tmp_path / "nope.yaml")


# --------------------------------------------------------------------------------------------
# against the model config


def test_check_against_model_layer_out_of_range():
    spec = load_spec_text(MINIMAL.replace("layer: l_start", "layer: 40"), ".")
    problems = check_against_model(spec, {"layers": 12, "max_positions": 0})
    assert problems == ["interventions[0].layer: 40 is out of range — this model has 12 layers: use 0..11"]
    assert check_against_model(spec, {"layers": 48, "max_positions": 0}) == []


def test_check_against_model_ranges_lists_filters_and_positions():
    text = (MINIMAL.replace("  sinks: {select: secondary_sinks}",
                            "  sinks: {select: secondary_sinks, l_start: 20}")
            .replace("layer: l_start", "layer: {from: 2, to: 30}")
            + "  - {kind: attention_mask, layers: [3, 12, 13], targets: [sinks]}\n"
            + "max_tokens: 4096\n")
    problems = check_against_model(load_spec_text(text, "."), {"layers": 12, "max_positions": 2048})
    assert "targets.sinks.l_start: 20 is out of range — this model has 12 layers: use 0..11" in problems
    assert "interventions[0].layer: 30 is out of range — this model has 12 layers: use 0..11" in problems
    assert "interventions[1].layers: 12, 13 are out of range — this model has 12 layers: use 0..11" in problems
    assert "max_tokens: 4096 is more than the model's 2048 positions — use at most 2048" in problems
    assert all("\n" not in p for p in problems)
    assert check_against_model(_example(), {"layers": 12, "max_positions": 0}) == []


# --------------------------------------------------------------------------------------------
# round trips and schema


def _round_trip(spec: Spec) -> Spec:
    return load_spec_text(yaml.safe_dump(spec.model_dump(), sort_keys=False, allow_unicode=True), ".")


def test_example_round_trip():
    spec = _example()
    again = _round_trip(spec)
    assert again == spec
    assert again.spec_hash == spec.spec_hash
    assert expand_conditions(again) == expand_conditions(spec)


_text = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=20)
_layer = st.one_of(
    st.integers(0, 40),
    st.lists(st.integers(0, 40), min_size=1, max_size=4, unique=True),
    st.integers(0, 20).flatmap(lambda a: st.integers(a, 40).map(lambda b: {"from": a, "to": b})),
)
_target_names = st.lists(st.sampled_from(["sinks", "tok", "pos"]), min_size=1, max_size=3, unique=True)
_common = {"targets": _target_names, "controls": st.sampled_from([None, "ctrl"])}
_interventions = st.one_of(
    st.fixed_dictionaries({"kind": st.just("zero"), "site": st.sampled_from(SITES),
                           "layer": st.one_of(_layer, st.just("l_start")), **_common}),
    st.fixed_dictionaries({"kind": st.just("scale"), "site": st.sampled_from(SITES),
                           "layer": st.one_of(_layer, st.just("l_start")),
                           "factors": st.lists(st.floats(0.01, 100), min_size=1, max_size=3, unique=True),
                           **_common}),
    st.fixed_dictionaries({"kind": st.just("mean_swap"),
                           "site": st.one_of(st.sampled_from(SITES),
                                             st.lists(st.sampled_from(SITES), min_size=1, max_size=3, unique=True)),
                           "layers": st.one_of(_layer, st.just("l_start"),
                                               st.integers(0, 5).map(lambda a: {"from": a, "to": "l_start"})),
                           "max_offset": st.integers(0, 4), **_common}),
    st.fixed_dictionaries({"kind": st.just("attention_mask"), "layers": st.one_of(_layer, st.just("sink_lifetime")),
                           "redirect": st.sampled_from(["none", "bos"]), **_common}),
)
_specs = st.fixed_dictionaries(
    {
        "name": st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,15}", fullmatch=True),
        "description": _text,
        "model": st.sampled_from(["testbed:planted", "testbed:planted-llama"]),
        "traces": st.just("testbed"),
        "limit": st.one_of(st.none(), st.integers(1, 1000)),
        "max_tokens": st.one_of(st.none(), st.integers(2, 100_000)),
        "chat_template": st.booleans(),
        "dtype": st.sampled_from(["auto", "float32", "bfloat16", "float16"]),
        "device": st.sampled_from(["cpu", "cuda", "cuda:1", "auto"]),
        "attn_implementation": st.sampled_from(["sdpa", "eager"]),
        "seed": st.integers(-(2**31), 2**31),
        "detection": st.fixed_dictionaries({
            "cos_threshold": st.floats(0.01, 1.0), "norm_ratio": st.floats(1.01, 100.0),
            "min_lifetime": st.integers(1, 10), "rule": st.sampled_from(["default", "legacy"])}),
        "targets": st.fixed_dictionaries({
            "sinks": st.fixed_dictionaries({"select": st.just("secondary_sinks")}, optional={
                "level": st.tuples(st.integers(0, 20), st.integers(1, 20)).map(list),
                "l_start": st.integers(0, 30),
                "tokens": st.lists(st.one_of(_text.filter(bool), st.integers(0, 50_000)), min_size=1, max_size=3)}),
            "tok": st.fixed_dictionaries({"select": st.just("tokens"), "tokens": st.lists(
                st.one_of(_text.filter(bool), st.integers(0, 50_000)), min_size=1, max_size=3)}),
            "pos": st.fixed_dictionaries({"select": st.just("positions"),
                                          "positions": st.lists(st.integers(-50, 50), min_size=1, max_size=4)}),
            "ctrl": st.fixed_dictionaries({"select": st.just("matched_controls"), "match": st.just("sinks"),
                                           "seed": st.integers(0, 99)}),
        }),
        "interventions": st.lists(_interventions, min_size=1, max_size=4),
        "measures": st.lists(st.sampled_from(list(MEASURES)), min_size=1, max_size=6, unique=True),
        "report": st.booleans(),
    }
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_specs)
def test_yaml_round_trip(data):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SpecWarning)
        try:
            spec = Spec.from_dict(data)
        except SpecError as exc:  # two generated interventions with identical conditions
            assume(all("repeats condition" in p for p in exc.problems))
            assume(False)
        again = _round_trip(spec)
    assert again == spec
    assert again.spec_hash == spec.spec_hash
    assert [c.id for c in expand_conditions(again)] == [c.id for c in expand_conditions(spec)]


def test_json_schema():
    schema = spec_json_schema()
    text = json.dumps(schema)
    assert json.loads(text) == schema
    assert schema["type"] == "object" and "interventions" in schema["properties"]
    for kind in KINDS:
        assert f'"{kind}"' in text, kind
    for select in TARGETS:
        assert f'"{select}"' in text, select
    assert set(schema["required"]) >= {"name", "model", "traces", "targets", "interventions"}
    # every field carries a description, for editor hover text
    for name, definition in [("Spec", schema), *schema["$defs"].items()]:
        for field_name, prop in definition.get("properties", {}).items():
            assert prop.get("description"), f"{name}.{field_name} has no description"


def test_registry_is_the_union():
    assert list(KINDS)[:4] == ["zero", "scale", "mean_swap", "attention_mask"]
    for name, cls in KINDS.items():
        assert cls.model_fields["kind"].default == name
        assert cls.model_config["extra"] == "forbid"


def test_colliding_interventions_name_their_targets_in_every_condition():
    """norm_scale scales two target groups by 2: every condition of both interventions then names its
    targets, not only the colliding x2 (a bare x5 beside x2.weak+others would hide what x5 edits)."""
    from pathlib import Path

    from interventions.spec import load_spec

    repo = Path(__file__).resolve().parent.parent
    ids = [c.id for c in load_spec(repo / "specs" / "norm_scale.yaml").conditions()]
    scaled = ["scale.mlp_output.l_start.x2.weak+others", "scale.mlp_output.l_start.x5.weak+others",
              "scale.mlp_output.l_start.x10.weak+others", "scale.mlp_output.l_start.x0.5.sinks",
              "scale.mlp_output.l_start.x2.sinks"]
    # H2's noise placebos follow the final names of the conditions they stand beside
    assert ids == scaled + [f"{c}.noise.placebo" for c in scaled]
