"""``testbed:positive-h4``: the planted model with a path that makes H4 true by construction.

A layer-5 head reads the secondary sinks' TAG into a feature X; X lowers later attention to the
primary sink and shifts the LM head (interventions/testbed/positive.py). Masking attention to the
secondary sinks in their lifetime layers removes X, so the primary sink score rises beyond what
softmax renormalisation predicts and predictions move; masking sets of ordinary tokens that remove as much
attention (mass-matched control sets) does neither.
The same checks on ``testbed:planted`` (H4's negative) come out null.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from interventions import detect, edit, load_model, observe, testbed
from interventions.compile.kind_edits import AttentionMask
from interventions.pipeline import analyze_run, run_spec
from interventions.spec import Spec
from interventions.spec.traces import traces_from_records
from interventions.testbed.planted import load_truth, planted_traces
from interventions.testbed.positive import READER_LAYER, X_DIM

from .conftest import REPO

PLANTED_LEVELS = {" ^": [[4, 2]], " #": [[4, 4]], " @": [[4, 7]], " &": [[4, 3]]}


@pytest.fixture(scope="module")
def positive(cache_dir):
    return load_model("testbed:positive-h4", dtype="float32")


@pytest.fixture(scope="module")
def truth(positive):
    return json.loads((Path(positive.source.path) / "truth.json").read_text())


MASKED = {"positive-h4": [" @"], "planted": [" @"], "planted-small": [" ^"]}
"""The secondary sinks each run masks. Its controls are sets of ordinary tokens matched on the attention mass
their masking removes (matched_controls by: attention_mass, size: auto), and H4's verdict keeps only traces whose
control sets remove 1-2x the sinks' mass (H4 claims an increase: a control set that removes less would tilt the
test toward the claim). Masking every secondary sink of a 57-token trace (five) removes more attention than the
trace's ordinary tokens can match when each serves one sink (control sets reach 0.28-0.45x on positive-h4: not
testable). One " @" per trace: on positive-h4 the sets reach the sink's mass in 6 of 16 traces, 0.47-0.98x in the
rest (measured), so positive-h4 runs 16 traces (8 give 3 matched: not testable). On the planted model ordinary
tokens draw less attention (its BOS is not weakened by X): " @" is matched in 1 of 8 traces (0.2x, not testable),
its small " ^" sinks in 11 of 16 (1.0x; 5 of 8 with 8 traces: not testable)."""
LIMIT = {"positive-h4": 16, "planted": 8, "planted-small": 16}


@pytest.fixture(scope="module")
def runs(cache_dir, tmp_path_factory):
    """specs/attn_mask.yaml (limit 8, the sinks of :data:`MASKED`) on the positive testbed and on the planted model
    (its negative)."""
    out = {}
    for name, tokens in MASKED.items():
        data = yaml.safe_load((REPO / "specs" / "attn_mask.yaml").read_text())
        data.update(model=f"testbed:{name.split('-small')[0]}", limit=LIMIT[name], report=False)
        data["targets"]["sinks"]["tokens"] = tokens
        if name == "planted-small":
            data["interventions"] = data["interventions"][:1]       # redirect: none only
        result = run_spec(Spec.from_dict(data), results_root=tmp_path_factory.mktemp(name), progress=False)
        stats = analyze_run(result.out, progress=False, report=False)[0]
        out[name] = (result.effects, stats)
    return out


def test_positive_h4_builds_with_the_planted_sinks(positive, truth):
    assert Path(positive.source.path).name == "positive-h4-v1-seed0"
    assert truth["positive"] == "positive-h4"
    assert truth["measured_levels"] == PLANTED_LEVELS            # same sinks and levels as the planted model
    assert {t["token"]: t["lifetime"] for t in truth["triggers"]} == {" ^": 2, " #": 4, " @": 7}
    assert truth["measured_primary"]["bos_norm_over_median_min"] > 50   # BOS 100 d, ordinary tokens ~1
    assert 0.2 < truth["measured_primary"]["max_abs_x"] < 1.0          # X is really written, and small
    t = load_truth(positive.source.path)
    texts = planted_traces(t, 4, gated=True)
    traces = traces_from_records([{"text": x} for x in texts], positive.tokenizer)
    found = detect(positive, traces, progress=False)
    assert set(found.primary().position) == {0} and set(found.traces.onset_layer) == {1}
    sec = found.secondary()
    levels = {tok: sorted({(int(a), int(b)) for a, b in zip(g.l_start, g.lifetime)})
              for tok, g in sec.groupby("token")}
    assert levels == {k: [tuple(x) for x in v] for k, v in PLANTED_LEVELS.items()}


def test_unknown_testbed_names_the_positive_one(cache_dir):
    from interventions.errors import UserError

    with pytest.raises(UserError, match="positive-h4"):
        testbed.testbed_folder("positive-h5")


def _layer_means(effects, is_control: bool):
    """Per layer: primary score minus what the mask does by arithmetic alone (the renormalisation
    prediction from the clean attention where the forward masks, the clean score elsewhere)."""
    rows = effects[(effects.condition == "attention_mask.sink_lifetime.redirect-none")
                   & (effects.is_control == is_control)]
    expected = rows.renorm_primary_sink_score.fillna(rows.clean_primary_sink_score)
    beyond = (rows.primary_sink_score - expected).groupby(rows.layer).mean()
    return beyond, rows.kl.mean()


def test_masking_secondary_sinks_moves_primary_beyond_renormalisation_and_predictions(runs):
    effects = runs["positive-h4"][0]
    target, target_kl = _layer_means(effects, False)
    control, control_kl = _layer_means(effects, True)
    # Layer 5 (the reader) is the first masked layer: its inputs are clean, so the edited score is the
    # prediction exactly. From layer 6 on X is missing and BOS gets more than renormalisation gives.
    assert abs(target[5]) < 1e-5
    assert (target[6:12] > 0.03).all(), target                       # measured 0.037 .. 0.039
    assert (control.abs() < 0.005).all(), control                     # measured -0.0004 .. 0
    # masking the " @" sinks (X loses their share; all five sinks of a trace: 0.17 nats); their control sets
    # mask about 27 ordinary tokens each (one draws 2-6% of a " @"), which carry no TAG: X and the predictions
    # barely move
    assert target_kl > 0.03 and control_kl < 0.001                   # measured 0.047 vs 1e-5 nats
    planted = runs["planted"][0]
    p_target, p_kl = _layer_means(planted, False)
    assert p_target.abs().max() < 1e-5 and p_kl < 1e-6               # H4's negative: only arithmetic


def _renormalised_primary(attn: torch.Tensor, masked: list[int]) -> float:
    """Mean-over-heads-and-queries BOS share if ``masked`` keys were removed and the rest renormalised."""
    a = attn[0]                                                      # [H, T, T]
    kept = 1 - a[:, :, masked].sum(-1) if masked else torch.ones_like(a[:, :, 0])
    return float((a[:, :, 0] / kept).mean())


@pytest.mark.parametrize("name,beyond", [("positive-h4", True), ("planted", False)])
def test_primary_change_in_masked_layers_is_beyond_renormalisation(cache_dir, name, beyond):
    """Mask every secondary sink at its lifetime layers (the project's AttentionMask) and compare the
    primary sink score with what renormalising the clean layer's attention predicts."""
    from transformers import AutoModelForCausalLM

    loaded = load_model(f"testbed:{name}", dtype="float32")
    eager = AutoModelForCausalLM.from_pretrained(loaded.source.path, dtype=torch.float32,
                                                 attn_implementation="eager").eval()
    t = load_truth(loaded.source.path)
    traces = traces_from_records([{"text": x} for x in planted_traces(t, 2, gated=True)], loaded.tokenizer)
    sinks = detect(loaded, traces, progress=False).secondary()
    gaps = []
    for tr in traces:
        mine = sinks[sinks.trace == tr.index]
        lives = {int(r.position): range(int(r.l_start), int(r.l_start + r.lifetime)) for r in mine.itertuples()}
        masks = [AttentionMask(layer=list(life), positions=[p]) for p, life in lives.items()]
        with edit(loaded, masks):
            scores = observe(loaded, tr.token_ids, names="sink_scores").sink_scores   # [L, H, T]
        with torch.no_grad():
            clean = eager(torch.tensor([tr.token_ids]), output_attentions=True).attentions
        for layer in range(READER_LAYER + 1, 11):                   # masked layers after the reader
            masked = [p for p, life in lives.items() if layer in life]
            assert masked
            gaps.append(float(scores[layer, :, 0].mean()) - _renormalised_primary(clean[layer], masked))
    gaps = np.array(gaps)
    print(name, "masked minus renormalised primary score, layers 6..10:", np.round(gaps, 4))
    if beyond:      # measured: 0.05 .. 0.20 above the renormalised clean share in every layer 6..10
        assert (gaps > 0.03).all(), gaps
    else:           # attention writes nothing downstream: renormalisation is the whole change
        assert np.abs(gaps).max() < 1e-4, gaps


def test_h4_verdict_supported_on_positive_not_on_planted(runs):
    def components(name, key="H4/sink_lifetime/none"):
        h4 = runs[name][1]["verdicts"][key]
        return h4, {c["name"]: c for c in h4["components"]}, h4["details"]["masked_attention_mass"]

    h4, comps, mass = components("positive-h4")
    print("positive-h4", mass, {k: (c["verdict"], c["effect"]) for k, c in comps.items()})
    assert mass["traces_matched"] >= 6 and mass["caliper"][0] == pytest.approx(1.0, abs=1e-5), mass   # measured 6 / 16
    assert mass["traces_dropped"] == 16 - mass["traces_matched"]
    beyond, kl = comps["primary_beyond_renormalisation"], comps["kl"]
    assert beyond["verdict"] == "supported" and beyond["effect"] > 0.01, beyond          # measured 0.015
    assert kl["verdict"] == "supported" and kl["effect"] > 0.015, kl                     # measured 0.026
    assert kl["n_independent"] == mass["traces_matched"]
    assert set(comps) == {"primary_beyond_renormalisation", "kl"}
    assert h4["verdict"] == "supported"
    # " @" on the planted model: ordinary tokens cannot match the sinks' mass, so H4 cannot be tested there
    p_h4, p_comps, p_mass = components("planted")
    print("planted", p_mass, {k: c["reason"] for k, c in p_comps.items()})
    assert p_mass["traces_matched"] < 6 and p_mass["controls_over_targets"] < 0.5, p_mass      # 1 / 8, 0.20
    assert p_h4["verdict"] == "not testable"
    assert all(c["verdict"] == "not testable" and "matched on attention mass" in c["reason"] for c in p_comps.values())
    # its " ^" sinks are matched: there the masks change nothing beyond arithmetic (H4 false)
    s_h4, s_comps, s_mass = components("planted-small", "H4")
    print("planted-small", s_mass, {k: (c["verdict"], c["effect"]) for k, c in s_comps.items()})
    assert s_mass["traces_matched"] >= 6, s_mass                                        # measured 11 / 16
    assert s_h4["verdict"] == "not supported"
    assert all(c["verdict"] == "not supported" and c["exact_null"] for c in s_comps.values()), s_comps


def test_x_is_written_only_after_a_secondary_sink(positive, truth):
    """X (the feature the masked sinks feed) is 0 before the first secondary sink and on BOS."""
    t = load_truth(positive.source.path)
    tr = traces_from_records([{"text": planted_traces(t, 1, gated=True)[0]}], positive.tokenizer)[0]
    h = observe(positive, tr.token_ids, names=f"block_output.{READER_LAYER}").activations[
        f"block_output.{READER_LAYER}"][:, X_DIM]
    ids = tr.token_ids
    triggers = {x["token_id"] for x in truth["triggers"]}
    gated = {(g["gate_token_id"], g["token_id"]) for g in truth["gated"]}
    first = next(p for p in range(1, len(ids)) if ids[p] in triggers or (ids[p - 1], ids[p]) in gated)
    assert float(h[:first].abs().max()) < 1e-6
    assert abs(float(h[first])) < 1e-3        # the sink itself is shielded: it looks at BOS, keeps its cosine
    assert float(h[first + 1:].max()) > 0.1
