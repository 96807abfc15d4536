"""The kind registry: one file per kind, duplicate names refused, typos answered, late kinds usable."""

from __future__ import annotations

import json
from typing import Literal

import pytest
import torch
from pydantic import Field

from interventions.compile import Edit, compile_edits
from interventions.errors import SpecError
from interventions.kinds.base import SiteIntervention
from interventions.registry import Registry
from interventions.spec import KINDS, Spec, register_kind, spec_json_schema

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny


class Negate(SiteIntervention):
    """Flip the sign of a site's output at the targets (a kind defined after import, in a test)."""

    kind: Literal["negate"] = Field("negate", description="Negate the site output of the target tokens.")

    def conditions(self, index):
        return [self._site_condition(index)]

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.kinds.scale import _scale_intervention_class

        return _scale_intervention_class()(-1.0, embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return -original


@pytest.fixture
def negate():
    register_kind(Negate)
    yield Negate
    KINDS.unregister("negate")


def test_registry_refuses_a_second_member_under_a_name():
    reg = Registry("thing")
    reg.register("a", 1)
    reg.register("a", 1)  # the same member again is harmless (a module imported twice)
    with pytest.raises(ValueError, match="'a' is already registered"):
        reg.register("a", 2)
    with pytest.raises(ValueError, match="already registered"):
        register_kind(type("Zero2", (KINDS["zero"],), {}))  # inherits kind 'zero'


def test_lookup_by_a_typo_says_which_name_was_meant():
    with pytest.raises(KeyError, match=r"'scael' is not a known intervention kind — use one of zero, scale, "
                                       r"mean_swap, attention_mask.*\(did you mean 'scale'\?\)"):
        KINDS.get_or_raise("scael")
    with pytest.raises(SpecError, match=r"interventions\[0\]\.kind: 'mean-swap' is not a known kind .*"
                                        r"\(did you mean 'mean_swap'\?\)"):
        Spec.from_dict({**PLANTED_BASE, "interventions": [{"kind": "mean-swap", "site": "mlp_output",
                                                             "layers": 2, "targets": ["sinks"]}]})


def test_a_kind_registered_after_import_is_validated_compiled_and_run(negate, tmp_path, cache_dir):
    entry = {"kind": "negate", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"]}
    with pytest.raises(SpecError, match="'negate' is not a known kind"):
        KINDS.unregister("negate")
        try:
            Spec.from_dict({**PLANTED_BASE, "interventions": [entry]})
        finally:
            register_kind(Negate)
    spec = Spec.from_dict({**PLANTED_BASE, "interventions": [entry]})
    assert isinstance(spec.interventions[0], Negate)
    assert [c.id for c in spec.conditions()] == ["negate.mlp_output.l_start"]
    assert '"negate"' in json.dumps(spec_json_schema())
    with pytest.raises(SpecError, match=r"interventions\[0\]: unknown key 'factor'"):
        Spec.from_dict({**PLANTED_BASE, "interventions": [{**entry, "factor": 2}]})

    # compiled through pyvene, equal to its own torch oracle
    loaded = loaded_tiny("llama")
    ids = torch.arange(2, 30)[None]
    edit = Edit("negate", 1, [5, 9], site="mlp_output")
    with torch.inference_mode():
        compiled = compile_edits(loaded, [edit]).forward(input_ids=ids).logits
        from interventions.api import edit as edit_ctx

        with edit_ctx(loaded, [edit]):
            hooked = loaded.model(input_ids=ids).logits
    assert (compiled - hooked).abs().max() < 1e-5

    # and run end to end: negating a planted sink's l_start MLP output removes the sink
    from interventions.pipeline import run_spec

    result = run_spec(spec, progress=False)
    targets = result.effects.drop_duplicates(["trace", "position"])
    assert set(targets.kind) == {"negate"} and len(targets) > 0
    assert (targets.clean_lifetime > 0).all() and (targets.lifetime == 0).mean() > 0.5


def test_importing_the_compiler_and_kinds_does_not_load_pyvene():
    import subprocess
    import sys

    code = ("import sys, interventions.compile, interventions.kinds, interventions.spec; "
            "assert 'pyvene' not in sys.modules, 'pyvene loaded at import'; "
            "from interventions.spec import KINDS; print(','.join(KINDS))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("zero,scale,mean_swap,attention_mask")
