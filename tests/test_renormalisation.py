"""The renormalisation prediction H4 is tested against, and controls matched on attention mass.

The prediction (``interventions.observation.renormalisation``) is checked three ways: against the formula
a[t,0] / (1 - m_t) computed from Hugging Face's own eager attention probabilities (an
independent path), against the edited forward in the first masked layer (whose inputs are still
clean, so the two must agree), and for ``redirect: bos`` against clean score + removed mass.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from interventions import edit, observe
from interventions.compile.kind_edits import AttentionMask
from interventions.models.attention import AttentionEdit
from interventions.observation.renormalisation import predicted_key_scores

from .conftest import REPO

LAYERS = (5, 6, 7)


@pytest.fixture(scope="module")
def trace(planted, planted_truth):
    """A planted trace with two secondary sinks (" #" and " @") and their positions."""
    tok = planted.tokenizer
    text = "the cat # sat on the # mat and the river @ ran to the sea with a little water"
    ids = [tok.bos_token_id] + tok(text.replace("# ", " # ").replace("@ ", " @ ").replace("  ", " "),
                                   add_special_tokens=False)["input_ids"]
    sinks = [i for i, t in enumerate(ids) if tok.decode([t]) in (" #", " @")]
    assert len(sinks) == 3
    return ids, sinks


def _eager_attentions(planted, ids):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(planted.source.path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    with torch.no_grad():
        return model(torch.tensor([ids]), output_attentions=True).attentions   # L x [1, H, T, T]


def test_prediction_is_the_renormalisation_formula_on_eager_attention(planted, trace):
    ids, sinks = trace
    plans = {"none": {l: AttentionEdit(masked_keys=tuple(sinks)) for l in LAYERS},
             "bos": {l: AttentionEdit(masked_keys=tuple(sinks), redirect_to=0) for l in LAYERS}}
    pred = predicted_key_scores(planted, ids, plans, key=0)
    att = _eager_attentions(planted, ids)
    for layer in LAYERS:
        a = att[layer][0].double()                       # [H, T, T]
        m = a[:, :, sinks].sum(-1)                       # mass each query loses
        renorm = (a[:, :, 0] / (1 - m)).mean().item()    # key 0 is seen by all T queries
        clean = a[:, :, 0].mean().item()
        assert pred["none"][layer]["score"] == pytest.approx(renorm, abs=2e-6)
        assert pred["bos"][layer]["score"] == pytest.approx(clean + m.mean().item(), abs=2e-6)
        assert pred["none"][layer]["removed"] == pytest.approx(m.mean().item(), abs=2e-6)
        # the arithmetic alone moves the primary sink by a visible amount: what H4 must not count
        assert renorm - clean > 0.01


def test_first_masked_layer_of_the_edited_run_equals_the_prediction(planted, trace):
    """The first masked layer still has clean inputs: edited score == prediction (float32 rounding).
    In the planted model attention writes nothing, so every later layer agrees too."""
    ids, sinks = trace
    pred = predicted_key_scores(planted, ids, {"p": {l: AttentionEdit(masked_keys=tuple(sinks)) for l in LAYERS}},
                                key=0)["p"]
    with edit(planted, [AttentionMask(layer=list(LAYERS), positions=sinks, redirect_to=None)]):
        edited = observe(planted, ids, names="sink_scores").sink_scores.mean(axis=1)[:, 0]
    clean = observe(planted, ids, names="sink_scores").sink_scores.mean(axis=1)[:, 0]
    for layer in LAYERS:
        assert edited[layer] == pytest.approx(pred[layer]["score"], abs=1e-6)
        assert abs(edited[layer] - clean[layer]) > 0.01       # the mask did move it


@pytest.mark.slow
def test_mass_matched_controls_carry_more_mass_than_random_ones(tmp_path, cache_dir):
    """by: attention_mass picks non-sink controls within the caliper with more clean attention mass
    than a random draw (the best available match), and never a sink."""
    from interventions.pipeline import run_spec
    from interventions.spec import Spec

    data = yaml.safe_load((REPO / "specs" / "attn_mask.yaml").read_text())
    data.update(limit=6, report=False)
    data["interventions"] = data["interventions"][:1]
    masses = {}
    for by in ("attention_mass", "random"):
        data["targets"]["ctrl"] = {"select": "matched_controls", "match": "sinks", "by": by, "caliper": 16}
        out = run_spec(Spec.from_dict(data), results_root=tmp_path / by, progress=False).out
        import pandas as pd

        e = pd.read_parquet(out / "effects.parquet")
        ctrl = e[e["is_control"]]
        assert (ctrl["clean_kind"] == "none").all()
        tgt = e[~e["is_control"]]
        pairs = sorted(set(zip(tgt["trace"], tgt["position"]))), sorted(set(zip(ctrl["trace"], ctrl["position"])))
        assert len(pairs[0]) == len(pairs[1])
        masses[by] = ctrl.dropna(subset=["masked_attention_mass"]).drop_duplicates(
            ["trace", "layer"])["masked_attention_mass"].mean()
        target_mass = tgt.dropna(subset=["masked_attention_mass"]).drop_duplicates(
            ["trace", "layer"])["masked_attention_mass"].mean()
    assert masses["attention_mass"] > 1.2 * masses["random"], masses
    assert masses["attention_mass"] < target_mass          # a sink draws more than any ordinary token
    assert np.isfinite(target_mass)
