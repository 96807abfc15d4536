"""The run summary (summary.csv, the terminal table) has one row per condition AND target set.

``specs/norm_scale.yaml`` scales two target sets in one condition: the sub-threshold ``" ~"``
(``weak``, becomes a sink whose lifetime grows with the factor) and non-sink ``" &"`` occurrences
(``others``, never a sink). A row per condition would show their mean ("0% -> 50%, life 1.5") and
hide both dose-responses.
"""

from __future__ import annotations

import re

import pandas as pd
import pytest

pytestmark = pytest.mark.slow

FACTORS = (2, 5, 10)


def _rows(summary: pd.DataFrame, target_set: str) -> pd.DataFrame:
    # the scale conditions themselves (their noise placebos, kind noise, have rows of their own)
    rows = summary[(summary.target_set == target_set) & ~summary.is_control.astype(bool)
                   & ~summary.condition.str.endswith(".placebo")]
    return rows.assign(factor=rows.factor.astype(float)).set_index("factor").sort_index()


def test_summary_has_a_row_per_target_set(norm_scale_run):
    summary = norm_scale_run.summary
    on_disk = pd.read_csv(norm_scale_run.out / "summary.csv")
    assert list(on_disk.columns[:3]) == ["condition", "target_set", "is_control"]
    assert len(on_disk) == len(summary)
    conditions = summary[~summary.is_control.astype(bool)].groupby("condition").target_set.apply(set)
    for factor in FACTORS:
        assert conditions[f"scale.mlp_output.l_start.x{factor}.weak+others"] == {"weak", "others"}
    weak, others = _rows(summary, "weak"), _rows(summary, "others")
    assert list(weak.index) == list(others.index) == [float(f) for f in FACTORS]
    # " ~" is never a sink clean and always one after scaling, for longer the larger the factor
    assert (weak.targets == 8).all() and (weak.sinks_clean == 0).all() and (weak.sinks_after == 1).all()
    assert list(weak.mean_lifetime) == [1.0, 3.0, 5.0]
    assert weak.mean_sink_score.is_monotonic_increasing and weak.mean_sink_score.iloc[-1] > 0.1
    # " &" non-sinks stay non-sinks at every factor
    assert (others.targets == 8).all() and (others.sinks_after == 0).all() and (others.mean_lifetime == 0).all()
    # the controls matched to "weak" have a row of their own per condition
    controls = summary[summary.is_control.astype(bool) & summary.condition.str.contains("weak")]
    assert set(controls.target_set) == {"ctrl"} and len(controls) == len(FACTORS)


def test_terminal_table_shows_each_target_set(norm_scale_run, monkeypatch):
    from interventions.report import tables

    monkeypatch.setenv("COLUMNS", "250")  # one line per row (narrower: key: value blocks, tested elsewhere)
    with tables.out.capture() as captured:
        tables.print_run_summary(norm_scale_run)
    text = captured.get()
    lines = {(m.group(1), m.group(2)): m.group(0) for m in
             re.finditer(r"^(scale\.\S+)\s+(weak|others|sinks)\s.*$", text, re.MULTILINE)}
    for factor, life in zip(FACTORS, ("1.0", "3.0", "5.0")):
        weak = lines[(f"scale.mlp_output.l_start.x{factor}.weak+others", "weak")].split()
        others = lines[(f"scale.mlp_output.l_start.x{factor}.weak+others", "others")].split()
        assert weak[2:5] == ["8", "0%->100%", life], weak
        assert others[2:5] == ["8", "0%->0%", "0.0"], others
    assert "targets" in text.splitlines()[1]  # the column header names the target set
