"""``noise``: a seeded random direction of a given or matched norm; pyvene equals its oracle, the vectors are
orthogonal to the sink direction with the norm of the matched edit's off-sink change, and a run gives its rows
a family and statistics with no other file knowing the kind."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from interventions.compile import Edit, compile_edits
from interventions.api import edit
from interventions.errors import SpecError
from interventions.spec import KINDS, Spec

from .conditions_helpers import PLANTED_BASE
from .conftest import loaded_tiny

IDS = torch.arange(2, 34)[None]


def spec(interventions, **over):
    return Spec.from_dict({**PLANTED_BASE, "interventions": interventions, **over})


def test_pyvene_noise_adds_each_position_its_own_row():
    loaded = loaded_tiny("qwen2", layers=3)
    rows = torch.randn(2, loaded.dims["hidden"], generator=torch.Generator().manual_seed(0))
    edits = [Edit("noise", 1, [6], site="mlp_output", vector=rows[:1]),
             Edit("noise", 1, [11], site="mlp_output", vector=rows[1:])]
    with torch.inference_mode():
        compiled = compile_edits(loaded, edits).forward(input_ids=IDS).logits
        with edit(loaded, edits):
            hooked = loaded.model(input_ids=IDS).logits
        clean = loaded.model(input_ids=IDS).logits
    assert (compiled - hooked).abs().max() < 1e-5
    assert torch.equal(compiled[0, :6], clean[0, :6]) and (compiled[0, 6] - clean[0, 6]).abs().max() > 0


def test_bad_noise_specs_are_one_line():
    with pytest.raises(SpecError, match="norm: matched needs matched_to"):
        spec([{"kind": "noise", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"]}])
    with pytest.raises(SpecError, match="matched_to.factor: give a factor with kind: scale"):
        spec([{"kind": "noise", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"],
               "matched_to": {"kind": "scale"}}])
    with pytest.raises(SpecError, match="not a positive number"):
        spec([{"kind": "noise", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"], "norm": -1}])


@pytest.fixture(scope="module")
def noise_run(tmp_path_factory):
    from interventions.pipeline import run_spec

    return run_spec(spec([
        {"kind": "noise", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"], "norm": "matched",
         "matched_to": {"kind": "zero"}, "match": "full"},
        {"kind": "noise", "site": "mlp_output", "layer": "l_start", "targets": ["sinks"], "norm": "matched",
         "matched_to": {"kind": "zero"}},
    ], limit=6), results_root=tmp_path_factory.mktemp("noise"), progress=False)


def test_matched_noise_has_the_norm_of_what_zeroing_removes(noise_run):
    """Full match: the noise norm equals the clean MLP output norm at l_start (the planted 12 / 22 / 35); the
    orthogonal match takes only the output's off-sink part, which the planted MLP (cos 0.995 to the sink) keeps
    small. The full-norm push rotates every planted sink off the threshold; the orthogonal one perturbs the
    forward (KL > 0) but keeps them."""
    rows = noise_run.effects[noise_run.effects.layer == noise_run.effects.intervened_layer]
    full = rows[rows.condition.str.contains("matched-zero-full")]
    assert len(full) and np.allclose(full.noise_norm, full.clean_ref_mlp_out_norm, rtol=1e-3)
    by_condition = rows.groupby("condition").agg(norm=("noise_norm", "mean"), clean=("clean_ref_mlp_out_norm", "mean"),
                                                 kept=("lifetime", lambda s: float((s > 0).mean())),
                                                 kl=("kl", "mean"))
    full_row = by_condition.loc[full.condition.iloc[0]]
    orth_row = by_condition.drop(index=full.condition.iloc[0]).iloc[0]
    assert full_row.kept == 0.0 and orth_row.kept == 1.0
    assert orth_row.norm < 0.2 * orth_row.clean and orth_row.kl > 0


def test_noise_rows_get_a_family_and_statistics_without_the_run_knowing_the_kind(noise_run):
    from interventions.stats.hypotheses import hypothesis_verdicts

    effects = noise_run.effects
    assert set(effects.kind) == {"noise"} and effects["noise_norm"].notna().all()
    family = KINDS["noise"].family_key({"kind": "noise", "site": "mlp_output", "layer": "l_start",
                                        "targets": ["sinks"]})
    assert family == ("noise", "mlp_output", "l_start", "sinks")
    verdicts, _ = hypothesis_verdicts(effects, noise_run.manifest)
    assert all(v["verdict"] == "not tested" for v in verdicts.values())   # H1-H4 select no noise condition


def test_noise_is_deterministic_in_seed_trace_position_and_layer():
    from interventions.kinds.noise import noise_vector

    class C:
        site = "mlp_output"
        params = {"norm": 3.0, "matched_to": None, "match": "orthogonal", "orthogonal_to_sink": True, "seed": 7}

    sink = torch.zeros(8)
    sink[0] = 5.0
    values = {("mlp_output", 2): torch.randn(3, 8), ("block_output", 2): torch.stack([sink, sink, sink])}
    state = {"values": values, "index": {0: 0, 4: 1, 5: 2}, "reference": 0, "trace": 1, "dtype": torch.float32}
    a, b = noise_vector(C, state, 4, 2), noise_vector(C, state, 4, 2)
    c = noise_vector(C, state, 5, 2)
    assert torch.equal(a, b) and not torch.allclose(a, c)
    assert abs(float(a.norm()) - 3.0) < 1e-5 and abs(float(a[0])) < 1e-6     # orthogonal to the sink direction


def test_noise_gets_a_figure_without_the_report_knowing_the_kind(noise_run):
    """The generic per-layer effects figure draws every condition of any kind: the full-norm noise loses the
    planted sinks after the edit (is_sink effect -1), the orthogonal one keeps them (a layer flickers at most)."""
    import matplotlib.pyplot as plt

    from interventions.pipeline import analyze_run
    from interventions.report.figures_layers import draw_layer_effects, layer_effect_rows

    stats, report = analyze_run(noise_run.out, progress=False)
    rows = layer_effect_rows(stats)
    sink = rows[rows.measure == "is_sink"]
    full = sink[sink.condition.str.contains("matched-zero-full")]
    orth = sink[~sink.condition.str.contains("matched-zero-full")]
    assert full.estimate.min() == pytest.approx(-1.0) and orth.estimate.min() > -0.5  # measured -1 and 0 to +0.17
    fig = draw_layer_effects({}, stats)
    labels = {line.get_label() for ax in fig.axes for line in ax.get_lines()}
    assert set(noise_run.effects.condition) <= labels
    plt.close(fig)
    assert "fig_layer_effects.png" in report.read_text()
