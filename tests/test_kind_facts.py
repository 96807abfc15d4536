"""Kinds declare what the analysis needs to know about them (issue #20: one home for each concept).

The statistics, the report and the run select a kind's rows through the facts its class declares
(``DOSE``, ``MASKS_TARGET_KEYS``, ``SWEEPS_LAYERS``, ``NOISE_MATCHABLE``, ...) read with
:func:`interventions.spec.conditions.kinds_with`, never by comparing with a kind's name. The source
check below keeps it that way; the registered outcome measures (``stats/outcomes.py``) name kinds as
registration data and are left out of it.
"""

from __future__ import annotations

import ast
import typing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from pydantic import Field

from interventions.spec.conditions import KINDS, InterventionBase, kinds_with, register_kind

from .conftest import REPO

CHECKED = ("run", "stats", "report")
"""Stages that must not branch on a kind's name."""
DATA_FILES = {Path("stats/outcomes.py")}
"""Files whose kind names are registration data (which kind's conditions a hypothesis measure reads)."""


def kind_name_uses(source: str, kinds) -> list[tuple[int, str]]:
    """``(line, text)`` of every place ``source`` names a kind to select or branch on it.

    Flagged: a string equal to a kind name (or starting with ``<kind>.``, a condition id) that is
    compared (``==``, ``!=``, ``in``; also inside a tuple, list or set compared with), passed as a
    positional argument or as a keyword whose name says kind, used as a subscript or as the value of
    a ``"kind"`` dict key. Not flagged: the same word as another keyword's value
    (``sm.add_constant(x, has_constant="add")``) or inside prose.
    """
    kinds = set(kinds)

    def names_kind(node) -> bool:
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            return False
        v = node.value
        return v in kinds or (" " not in v and any(v.startswith(f"{k}.") for k in kinds))

    def kind_constants(node) -> list[ast.Constant]:
        if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
            return [e for e in node.elts if names_kind(e)]
        return [node] if names_kind(node) else []

    found = []
    for node in ast.walk(ast.parse(source)):
        hits: list[ast.Constant] = []
        if isinstance(node, ast.Compare):
            for operand in (node.left, *node.comparators):
                hits += kind_constants(operand)
        elif isinstance(node, ast.Call):
            for arg in node.args:
                hits += kind_constants(arg)
            hits += [kw.value for kw in node.keywords if kw.arg and "kind" in kw.arg and names_kind(kw.value)]
        elif isinstance(node, ast.Subscript):
            hits += kind_constants(node.slice)
        elif isinstance(node, ast.Dict):
            hits += [v for k, v in zip(node.keys, node.values)
                     if isinstance(k, ast.Constant) and k.value == "kind" and names_kind(v)]
        found += [(h.lineno, h.value) for h in hits]
    return sorted(set(found))


def test_the_checker_finds_a_planted_kind_name_and_passes_other_uses():
    kinds = list(KINDS)
    planted = '''
if kind == "mean_swap":
    pass
rows = effects[effects.kind == "attention_mask"]
e = effects_of(tables, "scale")
if c.kind in ("zero", "noise"):
    pass
short = condition.removeprefix("attention_mask.")
cls = KINDS["patch"]
x = select(effects, kind="head_ablation")
matched = {"kind": "streaming"}
'''
    found = kind_name_uses(planted, kinds)
    assert [v for _, v in found] == ["mean_swap", "attention_mask", "scale", "noise", "zero", "attention_mask.",
                                     "patch", "head_ablation", "streaming"]
    assert [line for line, _ in found] == [2, 4, 5, 6, 6, 8, 9, 10, 11]
    clean = '''
res = ols(y, sm.add_constant(x, has_constant="add"), groups)
rows = effects[effects.kind.isin(kinds_with("DOSE"))]
"""A docstring about scale and zero conditions, e.g. scale.mlp_output.l_start.x5."""
'''
    assert kind_name_uses(clean, kinds) == []


def test_run_stats_and_report_select_kinds_by_their_facts_not_their_names():
    package = REPO / "interventions"
    offences = []
    for stage in CHECKED:
        for path in sorted((package / stage).rglob("*.py")):
            if path.relative_to(package) in DATA_FILES:
                continue
            offences += [f"{path.relative_to(REPO)}:{line}: {value!r}"
                         for line, value in kind_name_uses(path.read_text(encoding="utf-8"), KINDS)]
    assert not offences, ("select kinds by a fact their class declares (kinds_with), not by name:\n"
                          + "\n".join(offences))


def test_kinds_with_reads_each_fact_from_the_kind_classes():
    assert kinds_with("DOSE") == ["scale"]
    assert kinds_with("MASKS_TARGET_KEYS") == ["attention_mask"]
    assert kinds_with("SWEEPS_LAYERS") == ["mean_swap"]
    assert kinds_with("NOISE_MATCHABLE") == ["zero", "scale", "mean_swap"]
    assert set(kinds_with("TAUTOLOGICAL_AT_L_START")) == {n for n, c in KINDS.items() if c.TAUTOLOGICAL_AT_L_START}
    for fact in ("MASKS_TARGET_KEYS", "SWEEPS_LAYERS", "NOISE_MATCHABLE"):
        assert getattr(InterventionBase, fact) is False and getattr(InterventionBase, fact).__class__ is bool
    with pytest.raises(AttributeError, match="'MASKS_TARGETS' is not a kind fact; use one of .*MASKS_TARGET_KEYS"):
        kinds_with("MASKS_TARGETS")
    with pytest.raises(AttributeError, match="is not a kind fact"):
        kinds_with("conditions")  # a method, not a declared fact


def test_noise_matches_exactly_the_kinds_that_declare_it():
    """The noise kind's ``matched_to.kind`` choices and NOISE_MATCHABLE name the same kinds (two places, one set)."""
    from interventions.kinds.noise import MatchedTo

    assert set(typing.get_args(MatchedTo.model_fields["kind"].annotation)) == set(kinds_with("NOISE_MATCHABLE"))


@pytest.fixture
def copied_mask():
    """A kind registered late that declares MASKS_TARGET_KEYS, like attention_mask, under another name."""
    base = KINDS["attention_mask"]
    cls = type("MaskCopy", (base,), {"__annotations__": {"kind": typing.Literal["mask_copy"]},
                                     "kind": Field("mask_copy", description="a mask under another name")})
    register_kind(cls)
    yield cls
    KINDS.unregister("mask_copy")


def _kl_rows(kind: str, rng) -> pd.DataFrame:
    rows = [{"kind": kind, "condition": f"{kind}.l_start.redirect-none", "trace": t, "position": 5 + c,
             "is_control": bool(c), "kl": float(rng.gamma(2.0))} for t in range(6) for c in (0, 1)]
    return pd.DataFrame(rows)


def test_a_new_kind_that_declares_a_fact_is_summarised_like_the_built_in_one(copied_mask):
    from interventions.stats.summaries import mask_kl

    assert kinds_with("MASKS_TARGET_KEYS") == ["attention_mask", "mask_copy"]
    rng = np.random.default_rng(0)
    builtin, late = _kl_rows("attention_mask", rng), _kl_rows("mask_copy", rng)
    late["kl"] = builtin["kl"].to_numpy()  # the same numbers under the other kind
    a, b = mask_kl(builtin, seed=1), mask_kl(late, seed=1)
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        assert rb["condition"] == ra["condition"].replace("attention_mask", "mask_copy")
        assert rb["estimate"] == pytest.approx(ra["estimate"]) and rb["ci_low"] == pytest.approx(ra["ci_low"])
    assert mask_kl(_kl_rows("zero", rng)) == []  # a kind without the fact: no mask summary
