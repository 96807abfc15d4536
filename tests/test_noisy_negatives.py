"""Noisy negative testbeds (issue 18): the edit changes the forward, some sink cosines cross 0.95,
and the claim is still false by construction; the verdict path must never say "supported" there.

Construction is checked with plain transformers and forward hooks (not the project's run path);
the verdicts go through ``run_spec`` + ``analyze_run`` like any run.
"""

from __future__ import annotations

import pytest
import torch
import yaml

from interventions.testbed import planted as P
from interventions import testbed
from interventions.testbed.noisy import NOISIES

from .conftest import REPO

COS = P.COS_MIN
N_TRACES = 6


def _load(name: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = testbed.testbed_folder(name)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    return model, AutoTokenizer.from_pretrained(folder), P.load_truth(folder)


def _encode(tok, text):
    return [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]


def _hidden(model, ids, hooks=()):
    """Decoder-layer outputs [L, T, D] with forward hooks ``(module, fn)`` installed for this pass."""
    handles = [m.register_forward_hook(fn) for m, fn in hooks]
    try:
        with torch.no_grad():
            out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(out.hidden_states[1:])[:, 0], out.logits[0]


def _cos(h):
    return torch.nn.functional.cosine_similarity(h, h[:, :1], dim=-1)   # [L, T]


def _edit_output(positions, fn):
    def hook(_m, _a, out):
        o = (out[0] if isinstance(out, tuple) else out).clone()
        for p in positions:
            o[0, p] = fn(o[0, p])
        return (o, *out[1:]) if isinstance(out, tuple) else o
    return hook


@pytest.fixture(scope="module")
def noisy_h1(cache_dir):
    return _load("noisy-h1")


def test_noisy_names_are_registered_and_take_a_weight_seed(cache_dir):
    from interventions.errors import UserError

    assert set(NOISIES) == {"noisy-h1", "noisy-h2", "noisy-h3", "noisy-h4"}
    a, b = testbed.testbed_folder("noisy-h4@seed1"), testbed.testbed_folder("noisy-h4")
    assert a != b and a.name.endswith("-seed1") and b.name.endswith("-seed0")
    wa = (a / "model.safetensors").read_bytes()
    assert wa != (b / "model.safetensors").read_bytes()
    with pytest.raises(UserError, match="seed"):
        testbed.testbed_folder("noisy-h1@seedX")


def test_noisy_h1_zeroing_moves_sinks_both_ways_but_attention_writes_them(noisy_h1):
    model, tok, truth = noisy_h1
    trig = {truth_t["token_id"] for truth_t in truth.triggers}
    mlp, attn = model.model.layers[P.L_START].mlp, model.model.layers[P.L_START].self_attn
    lost = gained = n_sink = n_non = 0
    max_diff, attn_only_cos, d_parts = 0.0, [], []
    placebo_lost, gen = 0, torch.Generator().manual_seed(0)
    for text in P.planted_traces(truth, N_TRACES, gated=True):
        ids = _encode(tok, text)
        pos = [t for t, i in enumerate(ids) if i in trig]
        clean, _ = _hidden(model, ids)
        zeroed, _ = _hidden(model, ids, [(mlp, _edit_output(pos, torch.zeros_like))])
        max_diff = max(max_diff, float((zeroed - clean).abs().max()))
        c, z = _cos(clean)[P.L_START, pos], _cos(zeroed)[P.L_START, pos]
        sink = c > COS
        n_sink, n_non = n_sink + int(sink.sum()), n_non + int((~sink).sum())
        lost, gained = lost + int((sink & (z <= COS)).sum()), gained + int((~sink & (z > COS)).sum())
        # the MLP's push along d: its output's component on the sink direction, per occurrence
        mlp_out = {}
        _hidden(model, ids, [(mlp, lambda _m, _a, o: mlp_out.setdefault("o", o[0].clone()))])
        d_parts += [float(mlp_out["o"][p, P.SINK]) for p in pos]
        # the placebo of the same size: a random direction with the norm zeroing removes
        noise = _edit_output(pos, lambda v: v + (n := torch.randn(v.shape, generator=gen)) / n.norm() * v.norm())
        noisy, _ = _hidden(model, ids, [(mlp, noise)])
        placebo_lost += int((sink & (_cos(noisy)[P.L_START, pos] <= COS)).sum())
        # attention alone (MLP output zeroed everywhere at l_start) still puts every trigger along d
        none, _ = _hidden(model, ids, [(mlp, lambda _m, _a, o: torch.zeros_like(o))])
        attn_only_cos += _cos(none)[P.L_START, pos].tolist()
        # the MLP alone (the copying head's output removed) makes no sink
        no_attn, _ = _hidden(model, ids, [(attn, lambda _m, _a, o: (torch.zeros_like(o[0]), *o[1:]))])
        assert float(_cos(no_attn)[P.L_START, pos].max()) < 0.5
    d = torch.tensor(d_parts)
    print(f"noisy-h1: max|zeroed - clean| {max_diff:.3g}; clean sinks {n_sink}, non-sinks {n_non}; zeroing lost "
          f"{lost}, gained {gained}; same-norm random push lost {placebo_lost}; attention-only cos min "
          f"{min(attn_only_cos):.3f}; MLP d push mean {float(d.mean()):.2f} sd {float(d.std()):.2f}")
    assert max_diff > 1.0                                  # the edit changes the forward (not bit-identical)
    assert n_sink >= 8 and n_non >= 4                      # triggers on both sides of the threshold
    assert lost > 0 and gained > 0                         # zeroing moves cosines across 0.95 both ways
    assert min(attn_only_cos) > 0.9                        # the sink direction comes from attention
    assert (d > 0).any() and (d < 0).any()                 # the MLP pushes along d with either sign
    assert lost <= placebo_lost                            # zeroing loses no more sinks than a same-size random push


def test_noisy_h3_own_position_swap_moves_cosines_but_the_decision_is_upstream(cache_dir):
    """A mean swap of the whole state at layer 2, at every position after " $": the forward changes and
    near-threshold cosines cross 0.95 (non-sinks become sinks: the swap takes the scaled content away);
    without the layer-4 previous-token head nothing after " $" is a sink, whatever its own state."""
    model, tok, truth = _load("noisy-h3")
    gate = tok.convert_tokens_to_ids(tok.tokenize(P.GATE_TOKEN))[0]
    layer2, head4 = model.model.layers[2], model.model.layers[P.L_START].self_attn
    lost = gained = n_sink = n_non = 0
    max_diff = 0.0
    for text in P.planted_traces(truth, N_TRACES, gated=True):
        ids = _encode(tok, text)
        after = [t + 1 for t, i in enumerate(ids[:-1]) if i == gate]
        clean, _ = _hidden(model, ids)
        others = [t for t in range(1, len(ids)) if t not in after and ids[t] != gate]
        mean = clean[2, others].mean(0)
        swapped, _ = _hidden(model, ids, [(layer2, _edit_output(after, lambda v: mean.clone()))])
        max_diff = max(max_diff, float((swapped - clean).abs().max()))
        c, s = _cos(clean)[P.L_START, after], _cos(swapped)[P.L_START, after]
        n_sink, n_non = n_sink + int((c > COS).sum()), n_non + int((c <= COS).sum())
        lost, gained = lost + int(((c > COS) & (s <= COS)).sum()), gained + int(((c <= COS) & (s > COS)).sum())
        # without the layer-4 previous-token head no token after " $" is a sink: the decision is upstream
        no_head, _ = _hidden(model, ids, [(head4, lambda _m, _a, o: (torch.zeros_like(o[0]), *o[1:]))])
        assert float(_cos(no_head)[P.L_START, after].max()) < 0.5
    print(f"noisy-h3: max|swapped - clean| {max_diff:.3g}; after ' $': clean sinks {n_sink}, non-sinks {n_non}; "
          f"own-position swap at layer 2 lost {lost}, gained {gained}")
    assert n_sink >= 8 and max_diff > 0.1
    assert lost + gained > 0                 # the swap moves cosines across 0.95


def test_noisy_h4_attention_writes_content_but_nothing_reads_the_sinks(cache_dir):
    from safetensors.torch import load_file

    w = load_file(str(testbed.testbed_folder("noisy-h4") / "model.safetensors"))
    for layer in range(P.ONSET_LAYER, P.N_LAYERS):
        assert float(w[f"model.layers.{layer}.self_attn.o_proj.weight"].abs().sum()) > 0   # attention writes
        v = w[f"model.layers.{layer}.self_attn.v_proj.weight"]
        assert float(v[:, [P.SINK, P.TAG]].abs().max()) == 0    # no value reads what makes a sink a sink


def _run(spec_file: str, tmp_path, limit: int = 6):
    from interventions.pipeline import analyze_run
    from interventions.run.job import run_spec
    from interventions.spec import Spec

    data = yaml.safe_load((REPO / "specs" / "negatives" / spec_file).read_text())
    data.update(limit=limit, report=False)
    result = run_spec(Spec.from_dict(data, base_dir=REPO / "specs" / "negatives"), results_root=tmp_path,
                      progress=False)
    return analyze_run(result.out, progress=False, report=False)[0], result.out


@pytest.mark.slow
@pytest.mark.parametrize("spec_file,hyp", [
    ("noisy_h1.yaml", "H1"), ("noisy_h2.yaml", "H2"), ("noisy_h3.yaml", "H3"), ("noisy_h4.yaml", "H4")])
def test_noisy_negative_is_never_supported(cache_dir, tmp_path, spec_file, hyp):
    """specs/negatives/noisy_hN.yaml at 6 traces (H4: 16), with the comparison its positive spec declares: never "supported"."""
    stats, _ = _run(spec_file, tmp_path, limit=16 if hyp == "H4" else 6)   # H4: see specs/negatives/noisy_h4.yaml
    verdicts = {k: v["verdict"] for k, v in stats["verdicts"].items() if k.split("/")[0] == hyp}
    assert verdicts and all(v in ("not supported", "inconclusive", "not testable") for v in verdicts.values()), verdicts
    if hyp == "H4":  # the " ^" sinks are matched on attention mass: the negative exercises the test, not a refusal
        assert all(v != "not testable" for v in verdicts.values()), verdicts


def test_near_threshold_sinks_against_non_sink_controls_are_not_supported():
    """noisy-h1 as a table: zeroing is noise that moves near-threshold clean sinks both ways; controls are
    non-sinks that cannot lose a sink. At 30 traces the current path (targets minus non-sink controls)
    says "supported" (effect ~ -0.2); comparing with clean sinks under a placebo edit fixes it (issue 18)."""
    import sys

    from interventions.stats.analysis import hypothesis_verdicts

    sys.path.insert(0, str(REPO / "benchmarks"))
    from table_nulls import null_tables

    supported = 0
    for draw in range(5):
        tables = null_tables("h1_nonsink_controls", 30, seed=draw, per_trace=3)
        h1 = hypothesis_verdicts(tables["effects"], tables["manifest"], seed=draw)[0]["H1"]
        supported += h1["verdict"] == "supported"
    assert supported == 0


def test_calibration_smoke(cache_dir, tmp_path):
    """The calibration script end to end with K = 2 on its table-level nulls (through compute_stats)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("calibration", REPO / "benchmarks" / "calibration.py")
    calibration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(calibration)
    out = tmp_path / "cal.json"
    rows = calibration.main(["--draws", "2", "--traces", "6", "--full-stats", "--cases", "table H1", "table H3",
                             "--out", str(out)])
    assert {r["case"] for r in rows} == {"table H1 vs controls", "table H1 vs placebo", "table H3 vs placebo",
                                         "table H1 vs non-sink controls (noisy-h1 in a table)",
                                         "table H1 vs placebo, partly templated traces"}
    assert all(r["K"] == 2 and r["G"] == 6 and 0 <= r["supported"] <= 1 and "within_bound" in r for r in rows)
    assert out.is_file()
