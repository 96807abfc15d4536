"""``add``: a direction times a coefficient added at a site; pyvene equals its oracle, and the
primary sink's direction added to an ordinary token makes it a sink on the planted model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.api import edit, observe
from interventions.compile import Edit, compile_edits
from interventions.compile.kind_edits import Add
from interventions.errors import SpecError
from interventions.spec import KINDS, Spec

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny

IDS = torch.arange(2, 34)[None]


@pytest.mark.parametrize("family", ["qwen2", "llama", "phi3"])
@pytest.mark.parametrize("site", ["mlp_output", "attention_output", "block_output"])
def test_pyvene_add_equals_the_torch_oracle(family, site):
    loaded = loaded_tiny(family, layers=3)
    vector = torch.randn(loaded.dims["hidden"], generator=torch.Generator().manual_seed(3))
    e = Edit("add", 1, [6, 11, 20], site=site, vector=vector)
    with torch.inference_mode():
        compiled = compile_edits(loaded, [e]).forward(input_ids=IDS).logits
        with edit(loaded, [e]):  # the oracle, as plain hooks
            hooked = loaded.model(input_ids=IDS).logits
        clean = loaded.model(input_ids=IDS).logits
    assert (compiled - hooked).abs().max() < 1e-5
    assert torch.equal(compiled[0, :6], clean[0, :6]) and (compiled[0, 6] - clean[0, 6]).abs().max() > 0
    out = KINDS["add"].reference_value(e, torch.zeros(2, loaded.dims["hidden"]))
    assert torch.equal(out, vector.expand(2, -1))


def test_api_add_adds_coefficient_times_the_unit_direction():
    loaded = loaded_tiny("qwen2", layers=3)
    v = torch.zeros(loaded.dims["hidden"])
    v[0] = 2.0
    clean = observe(loaded, IDS[0], names="mlp_output.1")["mlp_output.1"]
    with edit(loaded, [Add(site="mlp_output", layer=1, positions=[4], vector=v, coefficient=-3.0, normalize=True)]):
        added = observe(loaded, IDS[0], names="mlp_output.1")["mlp_output.1"]
    delta = added[4] - clean[4]
    assert abs(float(delta[0]) + 3.0) < 1e-5 and float(delta[1:].abs().max()) < 1e-5


def spec(interventions, **over):
    return Spec.from_dict({**PLANTED_BASE, "interventions": interventions, **over})


def test_add_spec_checks_its_sets_files_and_names_conditions(tmp_path):
    with pytest.raises(SpecError, match=r"interventions\[0\]\.direction\.mean_diff\[1\]: 'ctlr' is not a defined "
                                        r"target set .*\(did you mean 'ctrl'\?\)"):
        spec([{"kind": "add", "site": "block_output", "layer": 4, "targets": ["weak"],
               "direction": {"mean_diff": ["sinks", "ctlr"]}, "coefficients": [1]}])
    (tmp_path / "spec.yaml").write_text("")
    from interventions.spec import load_spec_text

    text = ("name: a\nmodel: testbed:planted\ntraces: testbed\ntargets: {weak: {select: tokens, tokens: [' ~']}}\n"
            "interventions:\n  - {kind: add, site: block_output, layer: 4, targets: [weak], "
            "direction: {file: dirs/missing.npy}, coefficients: [2]}\n")
    with pytest.raises(SpecError, match=r"interventions\[0\]\.direction\.file: 'dirs/missing.npy' does not exist"):
        load_spec_text(text, tmp_path)
    (tmp_path / "dirs").mkdir()
    np.save(tmp_path / "dirs" / "missing.npy", np.ones(64, dtype=np.float32))
    s = load_spec_text(text, tmp_path)
    assert s.interventions[0].direction.file == str((tmp_path / "dirs" / "missing.npy").resolve())
    assert [c.id for c in s.conditions()] == ["add.block_output.L4.file:missing.c2"]
    with pytest.warns(UserWarning, match="0 adds nothing"):
        spec([{"kind": "add", "site": "mlp_output", "layer": 4, "targets": ["weak"], "direction": "primary_sink",
               "coefficients": [0, 8]}])


def test_primary_sink_direction_makes_an_ordinary_token_a_sink_on_the_planted_model(cache_dir):
    from interventions.pipeline import run_spec

    big = 200.0  # in units of the (normalized) direction: far above an ordinary token's norm
    result = run_spec(spec([
        {"kind": "add", "site": "block_output", "layer": 5, "targets": ["filler"], "direction": "primary_sink",
         "coefficients": [big, -big]},
        {"kind": "add", "site": "block_output", "layer": 5, "targets": ["filler"],
         "direction": {"mean_diff": ["primary", "filler"]}, "coefficients": [big]},
    ], targets={**PLANTED_BASE["targets"], "filler": {"select": "positions", "positions": [3]}}), progress=False)
    rows = result.effects[result.effects.layer == 5]
    assert set(rows.direction) == {"primary_sink", "mean_diff:primary-filler"}
    plus = rows[(rows.direction == "primary_sink") & (rows.coefficient == big)]
    minus = rows[(rows.direction == "primary_sink") & (rows.coefficient == -big)]
    diff = rows[rows.direction == "mean_diff:primary-filler"]
    assert len(plus) == 2 and not plus.clean_is_sink.any()
    assert plus.is_sink.all() and (plus.hidden_cos > 0.95).all()          # aligned with the sink, massive
    assert (minus.hidden_cos < -0.95).all() and not minus.is_sink.any()  # anti-aligned: not a sink
    assert diff.is_sink.all()
    assert result.effects[result.effects.kind == "add"].factor.isna().all()  # factor is scale's column
