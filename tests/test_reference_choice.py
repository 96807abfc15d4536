"""The observer's cosine references, chosen after the pass: every candidate's cosines equal the
ones computed directly against that position, a fixed reference is honoured, a position that
becomes massive mid-network is tracked from that layer on, and an intervened suffix forward
over a cache measures against the clean reference, even one inside the suffix."""

from __future__ import annotations

import numpy as np
import torch

from interventions.observation import Observer, observe_tokens

from .conftest import loaded_tiny

TOKENS = [5, 17, 33, 41, 12, 99, 7, 64, 23, 88, 3, 51]


def _states(loaded, ids):
    with torch.inference_mode():
        out = loaded.model(input_ids=torch.tensor([ids]), output_hidden_states=True)
    return torch.stack(out.hidden_states[1:-1])[:, 0]  # layers 0..L-2 (the last entry is final-normed)


def _cos(h, p):
    return torch.nn.functional.cosine_similarity(h, h[:, p:p + 1].expand_as(h), dim=-1).numpy()


def test_every_tracked_candidate_has_exact_cosines_and_selection_switches_them():
    loaded = loaded_tiny("qwen2")
    h = _states(loaded, TOKENS)
    obs = observe_tokens(loaded, TOKENS)
    assert {0, 1, 2} <= set(obs.candidates)
    for p in (0, 1, 2):
        np.testing.assert_allclose(obs.candidates[p]["hidden_cos"][:-1], _cos(h, p), atol=1e-5)
    np.testing.assert_allclose(obs.profiles["hidden_cos"][:-1], _cos(h, 0), atol=1e-5)  # position 0 until chosen
    obs.select_reference(2)
    assert obs.reference_position == 2
    np.testing.assert_allclose(obs.profiles["hidden_cos"][:-1], _cos(h, 2), atol=1e-5)
    torch.testing.assert_close(obs.references["hidden"][:-1], h[:, 2], atol=1e-5, rtol=1e-5)
    assert obs.final_norm is not None and obs.final_norm.shape == (len(TOKENS),)


def test_fixed_reference_and_massive_newcomers():
    loaded = loaded_tiny("llama")
    h = _states(loaded, TOKENS)
    fixed = observe_tokens(loaded, TOKENS, reference=7)
    assert fixed.reference_position == 7
    np.testing.assert_allclose(fixed.profiles["hidden_cos"][:-1], _cos(h, 7), atol=1e-5)
    # A tiny ratio makes every position "massive" at layer 0; the cap keeps the largest-ratio ones.
    with Observer(loaded, massive_ratio=1.0, max_candidates=3) as observer:
        with torch.inference_mode():
            loaded.model(input_ids=torch.tensor([TOKENS]))
    obs = observer.collect(TOKENS)
    extra = [p for p in obs.candidates if p not in (0, 1, 2)]
    assert len(extra) <= 3 and obs.dropped_candidates > 0
    for p in extra:
        since = obs.candidates[p]["since"]
        assert np.isnan(obs.candidates[p]["hidden_cos"][:since]).all()
        np.testing.assert_allclose(obs.candidates[p]["hidden_cos"][since:-1], _cos(h, p)[since:], atol=1e-5)


def test_suffix_forward_measures_against_the_clean_reference():
    from interventions.compile import Edit
    from interventions.run.execute import TraceExecutor

    loaded = loaded_tiny("qwen2")
    for ref in (1, 9):  # before and after the first edited position (6)
        ex = TraceExecutor(loaded, TOKENS, reference=ref)
        naive = TraceExecutor(loaded, TOKENS, reference=ref, reuse_prefix=False)
        edit = [Edit(kind="scale", layer=1, positions=[6], site="mlp_output", factor=3.0)]
        a, b = ex.intervened(edit), naive.intervened(edit)
        assert a.reference_position == b.reference_position == ref
        np.testing.assert_allclose(a.profiles["hidden_cos"], b.profiles["hidden_cos"], atol=1e-5)
