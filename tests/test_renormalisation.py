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
    """by: attention_mass, size: 1 picks one non-sink control per target within the caliper with more clean
    attention mass than a random draw (the best single match); size: auto a set per target (``control_of``) that
    removes more; never a sink."""
    from interventions.pipeline import run_spec
    from interventions.spec import Spec

    data = yaml.safe_load((REPO / "specs" / "attn_mask.yaml").read_text())
    data.update(limit=6, report=False)
    data["interventions"] = data["interventions"][:1]
    masses = {}
    for by, size in (("attention_mass", 1), ("random", "auto"), ("attention_mass", "auto")):
        data["targets"]["ctrl"] = {"select": "matched_controls", "match": "sinks", "by": by, "caliper": 16,
                                   "size": size}
        out = run_spec(Spec.from_dict(data), results_root=tmp_path / f"{by}-{size}", progress=False).out
        import pandas as pd

        e = pd.read_parquet(out / "effects.parquet")
        ctrl = e[e["is_control"]]
        assert (ctrl["clean_kind"] == "none").all()
        tgt = e[~e["is_control"]]
        assert (tgt["control_of"] == -1).all()
        targets, controls = set(zip(tgt["trace"], tgt["position"])), set(zip(ctrl["trace"], ctrl["position"]))
        assert set(zip(ctrl["trace"], ctrl["control_of"])) == targets       # every control names its target
        assert len(ctrl.drop_duplicates(["trace", "position", "control_of"])) == len(controls)   # in one set only
        if size == 1 or by == "random":
            assert len(controls) == len(targets)
        else:
            assert len(controls) > 3 * len(targets)
        masses[by, size] = ctrl.dropna(subset=["masked_attention_mass"]).drop_duplicates(
            ["trace", "layer"])["masked_attention_mass"].mean()
        target_mass = tgt.dropna(subset=["masked_attention_mass"]).drop_duplicates(
            ["trace", "layer"])["masked_attention_mass"].mean()
    print(masses, target_mass)
    assert masses["attention_mass", 1] > 1.2 * masses["random", "auto"], masses
    assert masses["attention_mass", 1] < target_mass          # a sink draws more than any ordinary token
    assert masses["attention_mass", "auto"] > 3 * masses["attention_mass", 1], masses
    assert np.isfinite(target_mass)


def _column_sums_as_key_scores(masses: list[float], n_layers: int = 3) -> np.ndarray:
    """[L, T] sink scores whose column sums (score x queries that see the key) are ``masses`` in every layer."""
    T = len(masses)
    return np.tile(np.asarray(masses, float) / (T - np.arange(T)), (n_layers, 1))


def test_mass_matched_sets_reach_the_targets_mass_and_targets_take_turns():
    from interventions.compile.targets import Target, mass_matched

    masses = [5.0] + [0.1] * 39
    masses[10] = 1.0
    sink = Target(position=10, token_id=0, token="s", target_set="sinks", l_start=0, ref_lifetime=2)
    pool = np.array([p for p in range(1, 40) if p != 10])
    ks = _column_sums_as_key_scores(masses)
    one = mass_matched([sink], pool, ks, caliper=32, n_layers=3, size=1)
    assert len(one) == 1
    sets = mass_matched([sink], pool, ks, caliper=32, n_layers=3, size="auto")
    total = sum(masses[p] for p, _ in sets)
    assert len(sets) == 10 and 1.0 <= total + 1e-9 < 2.0, (len(sets), total)   # stops once it reaches the mass
    # two sinks and 12 ordinary tokens of 0.1: each sink's set gets 6 (0.6x), not the first one 10 and the other 2
    masses = [5.0, 1.0, 1.0] + [0.1] * 12
    a = Target(position=1, token_id=0, token="a", target_set="sinks", l_start=0, ref_lifetime=2)
    b = Target(position=2, token_id=0, token="b", target_set="sinks", l_start=0, ref_lifetime=2)
    pairs = mass_matched([a, b], np.arange(3, 15), _column_sums_as_key_scores(masses), caliper=32, n_layers=3,
                         size="auto")
    assert sorted(sum(1 for _, m in pairs if m is t) for t in (a, b)) == [6, 6]
    assert len({p for p, _ in pairs}) == 12                                       # without replacement
