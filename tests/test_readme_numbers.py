"""Every number README.md and experiments/README.md quote from a run of the planted model, checked
against a fresh run of ``specs/norm_scale.yaml`` (the session fixture ``norm_scale_run``, run once).

Each check builds the README's phrase from the measured value at the README's precision and
requires it verbatim, so a stale number (a fit that changed, a rule that moved a lifetime) fails
here instead of silently staying in the documentation.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest

from .conftest import REPO

pytestmark = pytest.mark.slow

README = (REPO / "README.md").read_text()
EXPERIMENTS = (REPO / "experiments" / "README.md").read_text()
WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}


def flat(text: str) -> str:
    """Markdown with its line breaks folded (a phrase may wrap anywhere)."""
    return re.sub(r"\s+", " ", text)


def sci(value: float) -> str:
    """``1e-4`` as the README writes a permutation p at its floor."""
    mantissa, exponent = f"{value:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def planted_row(study: str) -> str:
    """The study's row of the "What the planted model shows" table."""
    lines = EXPERIMENTS.splitlines()
    start = lines.index("| study | planted result | expected verdict | why |")
    return next(line for line in lines[start:] if line.startswith(f"| `{study}` |"))


def f2(value: float) -> str:
    return f"{value:.2f}"


@pytest.fixture(scope="module")
def measured(norm_scale_run):
    stats = norm_scale_run.stats
    assert stats is not None
    return stats


def test_h2_paragraph(measured, norm_scale_run):
    text = flat(README)
    h2 = measured["verdicts"]["H2/mlp_output/l_start/sinks"]
    low, high = h2["ci"]
    n_traces = h2["n_independent"]
    assert n_traces == 8 and "(8 traces) gives one H2 verdict per target set" in text and h2["verdict"] == "supported"
    assert h2["compared_with"] == "placebo" and all(c.endswith(".noise.placebo") for c in h2["comparison_conditions"])
    assert f"the lifetime rising {f2(h2['effect'])} [{f2(low)}, {f2(high)}] layers per log-factor" in text
    assert math.isclose(h2["p"], 2 / 2 ** n_traces) and f"p = 2/2^{n_traces}" in text
    assert f"resting on the {WORDS[len(h2['conditions'])]} scale conditions of that set" in text
    weak = measured["verdicts"]["H2/mlp_output/l_start/weak"]
    assert weak["verdict"] == "supported" and weak["degenerate"] and f"{f2(weak['effect'])} in every trace" in text
    others = measured["verdicts"]["H2/mlp_output/l_start/others"]
    assert others["verdict"] == "not supported" and others["exact_zero"]
    assert f"`p_holm` {h2['p_holm']:.2g}" in text and h2["verdict_holm"] == weak["verdict_holm"] == "supported"

    ns = measured["norm_score"]
    assert ns["window"] == 4 and "fixed window l_start+1..l_start+4" in text
    assert f"({ns['n_sinks']} sinks, {ns['n_dead_rows']} of the {ns['n_rows']} rows after a sink died)" in text
    assert f"common slope of {f2(ns['slope'])} [{f2(ns['ci_low'])}, {f2(ns['ci_high'])}]" in text
    assert f"Bell-McCaffrey df {ns['df']:.1f}" in text
    per_layer = {r["layer"]: r["slope"] for r in ns["per_layer"] if r["estimable"]}
    first, last = min(per_layer), max(per_layer)
    assert per_layer[last] == max(per_layer.values()) and ns["steepest_layer"] == last
    assert f"from {f2(per_layer[first])} at layer {first} to {per_layer[last]:.3g} at layer {last}" in text

    nl = measured["norm_lifetime"]
    sp = nl["spearman"]
    assert f"Spearman rho {sp['rho']:.3f} (permutation p {sci(sp['p_perm'])})" in text
    bic = nl["comparison"]["bic"]
    assert nl["comparison"]["best"] == "isotonic" and "the isotonic step fit has the lowest BIC" in text
    assert (f"({f2(bic['isotonic'])}, against {f2(bic['segmented_1'])} with one breakpoint and "
            f"{f2(bic['linear'])} for a line)") in text
    assert min(bic, key=bic.get) == "isotonic"
    levels = [int(p["level"]) for p in nl["isotonic"]["plateaus"]]
    assert f"planted lifetimes {', '.join(map(str, levels))} are steps" in text


def test_dose_response_caption_and_compare_runs_example(norm_scale_run):
    """The figure caption and the compare-runs paragraph: " ~" becomes a sink for 1, 3, 5 layers at
    2x, 5x, 10x, " &" never does, so half the 16 targets are sinks; +0.5 against 2x at layers 5-6, 5-8."""
    text = flat(README)
    summary = norm_scale_run.summary
    targets = summary[~summary.is_control.astype(bool) & ~summary.condition.str.endswith(".placebo")]
    weak = targets[targets.target_set == "weak"].sort_values("factor")
    others = targets[targets.target_set == "others"].sort_values("factor")
    assert list(weak.factor.astype(float)) == [2.0, 5.0, 10.0]
    lifetimes = [int(v) for v in weak.mean_lifetime]
    assert (weak.sinks_after == 1).all() and (others.sinks_after == 0).all()
    assert ("(8 `\" ~\"` and 8 non-sink `\" &\"` tokens, 8 traces)" in text and set(weak.targets) == {8}
            and set(others.targets) == {8})
    assert f"for {lifetimes[0]}, {lifetimes[1]} and {lifetimes[2]} layers at 2x, 5x and 10x" in text
    assert f"becomes a sink with lifetimes {lifetimes[0]}, {lifetimes[1]}, {lifetimes[2]} at 2x, 5x, 10x" in text
    assert "so half the targets become sinks from layer 4" in text

    e = norm_scale_run.effects
    e = e[e.condition.str.endswith("weak+others") & ~e.is_control.astype(bool)]
    change = (e.is_sink.astype(float) - e.clean_is_sink.astype(float)).groupby([e.factor, e.layer]).mean()
    by_factor = {f: change.loc[f] for f in (2.0, 5.0, 10.0)}
    assert sorted(by_factor[2.0][by_factor[2.0] > 0].index) == [4]  # sinks from the edited l_start
    for factor, span in ((5.0, "5-6"), (10.0, "5-8")):
        diff = by_factor[factor] - by_factor[2.0]
        up = sorted(diff[np.isclose(diff, 0.5)].index)
        assert np.allclose(diff[~np.isclose(diff, 0.5)], 0)
        assert f"{up[0]}-{up[-1]}" == span
    assert "+0.5 at layers 5-6 (5x) and 5-8 (10x)" in text


def test_experiments_readme_planted_model_and_norm_laws(norm_scale_run, measured, planted_truth):
    """experiments/README.md: the planted model's sinks as detection finds them, and the norm_laws row
    (``experiments/norm_laws`` runs ``specs/norm_scale.yaml`` with the same 8 traces and seed)."""
    text = flat(EXPERIMENTS)
    sinks = norm_scale_run.clean_sinks
    sec = sinks[sinks.kind == "secondary"]
    by_token = sec.groupby("token").agg(lifetime=("lifetime", "unique"), norm=("mlp_out_norm", "mean"))
    triggers = [" ^", " #", " @"]
    assert all(len(by_token.loc[t, "lifetime"]) == 1 for t in triggers + [" &"])
    norms = " / ".join(f"{by_token.loc[t, 'norm']:.0f}" for t in triggers)
    lives = " / ".join(str(int(by_token.loc[t, "lifetime"][0])) for t in triggers)
    assert f"output norms {norms} and lifetimes {lives};" in text
    assert f"`\" &\"` a sink (lifetime {int(by_token.loc[' &', 'lifetime'][0])})" in text
    (weak,) = planted_truth.sub_threshold
    assert weak["token"] == " ~" and " ~" not in set(sec.token)
    assert f"`\" ~\"` sub-threshold (norm {weak['mlp_out_norm']:.1f})" in text

    # sink_levels row: the levels and token shares of the same 8 traces
    row = planted_row("sink_levels")
    levels = sec.groupby(["l_start", "lifetime"]).size()
    assert ", ".join(f"({a},{b}) x{n}" for (a, b), n in levels.items()) + " over 8 traces" in row
    share = sec.token.value_counts(normalize=True)
    assert ", ".join(f"`{t.strip()}` {100 * share[t]:g}%" for t in triggers + [" &"]) in row
    primary = sinks[sinks.kind == "primary"]
    assert len(primary) == sinks.trace.nunique() == 8 and set(primary.l_start) == {1}

    # compensation row, its planted (observational) part
    row = planted_row("compensation")
    comp = measured["compensation"]
    assert (f"valley at layer {comp['valley_layer']} ({100 * comp['valley_in_range_fraction']:.0f}% of bootstrap "
            f"draws within l_start +-1), l_start mode {comp['l_start']['mode']}") in row

    row = planted_row("norm_laws")
    h2 = measured["verdicts"]["H2/mlp_output/l_start/sinks"]
    weak = measured["verdicts"]["H2/mlp_output/l_start/weak"]
    ns, nl = measured["norm_score"], measured["norm_lifetime"]
    controls = {g: v["controls"]["lifetime"] for g, v in measured["dose_response"].items()}
    assert all(c["exact_zero"] and c["slope"] == 0 for c in controls.values())
    plateaus = " / ".join(str(int(p["level"])) for p in nl["isotonic"]["plateaus"])
    for phrase in ((f"sinks supported, lifetime slope {f2(h2['effect'])} layers per log(factor) "
                    f"[{f2(h2['ci'][0])}, {f2(h2['ci'][1])}] beyond the placebo"),
                   f"supported, {f2(weak['effect'])} in every trace (degenerate)",
                   (f"norm -> score common slope {f2(ns['slope'])} [{f2(ns['ci_low'])}, {f2(ns['ci_high'])}], "
                    f"p < 0.001 (steepest at layer {ns['steepest_layer']})"),
                   f"norm -> lifetime Spearman {nl['spearman']['rho']:.3f} (p_perm {sci(nl['spearman']['p_perm'])})",
                   f"best fit {nl['comparison']['best']} with plateaus at {plateaus} layers"):
        assert phrase in row, phrase
    assert ns["p"] < 0.001
