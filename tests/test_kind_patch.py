"""``patch``: activation patching from another position or trace; pyvene equals its oracle, a
clean value patched into itself changes nothing, and a sink's state patched into an ordinary
position makes it a sink on the planted model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.api import edit, observe
from interventions.compile import Edit, compile_edits
from interventions.compile.kind_edits import Patch
from interventions.errors import SpecError
from interventions.spec import Spec

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny

IDS = torch.arange(2, 34)[None]


@pytest.mark.parametrize("family", ["qwen2", "qwen3", "mistral"])
@pytest.mark.parametrize("site", ["mlp_output", "attention_output", "block_output"])
def test_pyvene_patch_equals_the_torch_oracle(family, site):
    loaded = loaded_tiny(family, layers=3)
    rows = torch.randn(3, loaded.dims["hidden"], generator=torch.Generator().manual_seed(5))
    e = Edit("patch", 1, [20, 6, 11], site=site, vector=rows)  # unsorted: each row follows its position
    assert e.positions == [6, 11, 20] and torch.equal(e.vector[0], rows[1])
    with torch.inference_mode():
        compiled = compile_edits(loaded, [e]).forward(input_ids=IDS).logits
        with edit(loaded, [e]):
            hooked = loaded.model(input_ids=IDS).logits
    assert (compiled - hooked).abs().max() < 1e-5
    seen = observe(loaded, IDS[0], names=f"{site}.1")
    with edit(loaded, [e]):
        patched = observe(loaded, IDS[0], names=f"{site}.1")
    assert torch.allclose(patched[f"{site}.1"][[6, 11, 20]], e.vector, atol=1e-6)
    assert torch.equal(patched[f"{site}.1"][:6], seen[f"{site}.1"][:6])


def test_patching_a_clean_value_into_itself_changes_nothing():
    loaded = loaded_tiny("llama", layers=3)
    with torch.inference_mode():
        clean = loaded.model(input_ids=IDS).logits
        for site in ("mlp_output", "block_output"):
            self_patch = Patch(site=site, layer=[0, 2], positions=[3, 17], source_tokens=IDS[0])
            with edit(loaded, [self_patch]):
                assert torch.allclose(loaded.model(input_ids=IDS).logits, clean, atol=1e-6)
        # a value from another input does change the forward
        other = torch.arange(40, 72)
        with edit(loaded, [Patch(site="block_output", layer=1, positions=[17], source_tokens=other)]):
            assert (loaded.model(input_ids=IDS).logits - clean).abs().max() > 1e-3


def spec(interventions, **over):
    return Spec.from_dict({**PLANTED_BASE, "interventions": interventions, **over})


def test_patch_spec_checks_and_names_its_source():
    with pytest.raises(SpecError, match=r"interventions\[0\]\.source\.set: 'primay' is not a defined target set"
                                        r".*\(did you mean 'primary'\?\)"):
        spec([{"kind": "patch", "site": "block_output", "layer": 4, "targets": ["weak"], "source": {"set": "primay"}}])
    with pytest.raises(SpecError, match=r"interventions\[0\]\.source: give position or set, not both"):
        spec([{"kind": "patch", "site": "block_output", "layer": 4, "targets": ["weak"],
               "source": {"set": "primary", "position": 0}}])
    s = spec([{"kind": "patch", "site": "block_output", "layer": 4, "targets": ["weak"], "source": {"trace": 1}},
              {"kind": "patch", "site": "mlp_output", "layer": [4, 5], "targets": ["weak"],
               "source": {"trace": 0, "position": -1}}])
    assert [c.id for c in s.conditions()] == ["patch.block_output.L4.from-t1", "patch.mlp_output.L4+5.from-t0-p-1"]
    with pytest.warns(UserWarning, match="changes nothing"):
        spec([{"kind": "patch", "site": "block_output", "layer": 4, "targets": ["weak"]}])


def test_patched_sink_states_make_ordinary_positions_sinks_on_the_planted_model(cache_dir):
    from interventions.pipeline import run_spec

    targets = {**PLANTED_BASE["targets"], "filler": {"select": "positions", "positions": [3]}}
    with pytest.warns(UserWarning, match="changes nothing"):
        patches = spec([
            {"kind": "patch", "site": "block_output", "layer": 5, "targets": ["filler"], "source": {"set": "primary"}},
            {"kind": "patch", "site": "block_output", "layer": 5, "targets": ["filler"], "source": {"set": "sinks"}},
            {"kind": "patch", "site": "block_output", "layer": 5, "targets": ["sinks"]},  # into itself
            {"kind": "patch", "site": "block_output", "layer": 5, "targets": ["filler"], "source": {"trace": 1}},
        ], targets=targets)
    result = run_spec(patches, progress=False)
    e = result.effects
    at5 = e[e.layer == 5]
    from_primary = at5[at5.condition == "patch.block_output.L5.from-primary"]
    from_secondary = at5[at5.condition == "patch.block_output.L5.from-sinks"]
    assert len(from_primary) == 2 and not from_primary.clean_is_sink.any()
    assert from_primary.is_sink.all() and (from_primary.hidden_cos > 0.999).all()
    assert (from_primary.source_position == 0).all() and (from_primary.source_trace == from_primary.trace).all()
    assert from_secondary.is_sink.all() and (from_secondary.source_position > 3).all()
    itself = e[e.condition == "patch.block_output.L5.from-self"]
    assert len(itself) > 0 and (itself.source_position == itself.position).all()
    for col in ("hidden_norm", "hidden_cos", "sink_score", "lifetime"):
        np.testing.assert_allclose(itself[col], itself["clean_" + col], rtol=1e-5, atol=1e-5)
    assert (itself.kl.abs() < 1e-6).all()
    across = at5[at5.condition == "patch.block_output.L5.from-t1"]
    assert set(across.source_trace) == {1} and set(across.trace) == {0, 1}
    assert (across[across.trace == 0].kl > 0).all() and (across[across.trace == 1].kl.abs() < 1e-6).all()
