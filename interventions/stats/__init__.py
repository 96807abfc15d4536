"""Statistics layer: pure functions from pandas DataFrames to JSON-ready results.

- :mod:`.fits`: norm -> sink-score ratio, norm -> lifetime (plateaus), dose-response.
- :mod:`.effects`: per-layer intervention effects with trace-level inference, compensation.
- :mod:`.summaries`: descriptive means with trace-bootstrap intervals, the numbers the figures draw.
- :mod:`.verdicts`: the verdict rule and the sign-flip estimate behind every verdict.
- :mod:`.hypotheses`: the verdict path (one verdict per hypothesis and condition family); :mod:`.outcomes`: the
  built-in hypothesis measures.
- :mod:`.jsonable`: :func:`to_jsonable` for writing ``stats.json``.

Every random draw is seeded (``np.random.default_rng``), the trace is the unit of inference
throughout, and too little data gives ``estimable: False`` with a reason, never an exception.
Regression CIs use CR2 with Bell-McCaffrey degrees of freedom; effect CIs invert the trace
sign-flip test that gives their p. Exact zeros (``exact_zero``) and degenerate estimates
(``degenerate``, with ``degenerate_reason``) carry no CI and no p-value.
"""

from ._common import SNAP_RTOL, snap_rtol_for
from .effects import (
    adjust_pvalues,
    compensation,
    mask_primary_change,
    masked_layer_rows,
    per_layer_effects,
    trace_mean_test,
)
from .fits import (dose_response, fit_norm_lifetime, fit_norm_score, log_linear_check, log_linear_lack_of_fit,
                   norm_score_rows, page_trend, spearman_permutation)
from .jsonable import to_jsonable
from .summaries import figure_summaries, trace_means
from .verdicts import VERDICT_RULE, combine, judge, trace_sign_flip, verdict

__all__ = [
    "SNAP_RTOL",
    "VERDICT_RULE",
    "adjust_pvalues",
    "combine",
    "compensation",
    "dose_response",
    "fit_norm_lifetime",
    "figure_summaries",
    "fit_norm_score",
    "log_linear_check",
    "log_linear_lack_of_fit",
    "norm_score_rows",
    "judge",
    "mask_primary_change",
    "masked_layer_rows",
    "page_trend",
    "per_layer_effects",
    "snap_rtol_for",
    "spearman_permutation",
    "to_jsonable",
    "trace_mean_test",
    "trace_sign_flip",
    "trace_means",
    "verdict",
]
