"""Per-head sink measures and head classes, from one streamed forward per trace.

What the sink literature measures per attention head, in one pass that also runs on sdpa at
long context:

* ``alpha`` (Gu et al. 2024, *When Attention Sink Emerges*): the share of attention that the
  queries able to see key ``k`` give it, ``alpha[l, h] = 1/(T-k) * sum_{i>=k} a[l, h, i, k]``,
  for the sink key ``k`` (default the first token, as Gu et al.). This is the paper's per-head
  sink score of that key, so it comes from the same column sums as every other sink score here.
* **Sink-epsilon** (Gu et al.): the share of the model's heads with ``alpha > epsilon``
  (default 0.3). Reported per trace and as the mean over traces.
* ``entropy``: the mean over queries of the Shannon entropy (nats) of the head's attention row,
  summed inside the same fused attention pass that gives the column sums (0: one key per query).
* ``output_norm``: the mean over queries of ||W_O^h o^h_t||, the norm of what head h writes
  into the residual stream (its slice of the output projection applied to its own output), and
  ``output_ratio``: that norm over the median token norm of the residual stream entering the
  layer. A head that puts most of its attention on the sink and writes little is *dormant*
  (Guo et al. 2024, *Active-dormant attention heads*; Sandoval-Segura et al. 2025, inactive heads).

Classification (every threshold is a parameter of :class:`HeadClasses`, never a constant):

* ``dormant``: ``alpha > epsilon`` and ``output_ratio < dormant_ratio``;
* ``sink``: ``alpha > epsilon`` otherwise;
* ``other``: the rest.

Measures are averaged over traces first, then classified (``alpha_sd`` is the spread across traces).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np
import pandas as pd
import torch

from interventions.models.adapters import decoder_layers, get_module
from interventions.models.attention import ColumnSumRequest
from interventions.observation import Observer

HEAD_CLASSES = ("sink", "dormant", "other")


@dataclass(frozen=True)
class HeadClasses:
    """Thresholds of the head classification (recorded with every head table)."""

    epsilon: float = 0.3
    """A head is a sink head when ``alpha`` on the sink key exceeds this (Gu et al.'s epsilon)."""
    dormant_ratio: float = 0.05
    """A sink head is dormant when its mean output norm is below this fraction of the median
    token norm of the residual stream entering its layer (it writes almost nothing)."""
    key_position: int = 0
    """The sink key whose attention share is ``alpha`` (0: the first token, as Gu et al.)."""


@dataclass
class HeadMeasures:
    """Per-(layer, head) sink measures of one model over a set of traces."""

    table: pd.DataFrame
    """One row per (layer, head): alpha, alpha_sd, entropy, output_norm, output_ratio,
    head_class, averaged over traces."""
    per_trace: pd.DataFrame
    """One row per (trace, layer, head): alpha, entropy, output_norm, output_ratio."""
    sink_epsilon: float
    """Mean over traces of the share of heads with alpha > epsilon (Gu et al.'s Sink-epsilon)."""
    sink_epsilon_per_trace: list[float]
    classes: HeadClasses
    model: str = ""
    traces: str = ""

    def counts(self) -> dict[str, int]:
        """Number of heads in each class."""
        vc = self.table["head_class"].value_counts()
        return {c: int(vc.get(c, 0)) for c in HEAD_CLASSES}

    def heads_of(self, head_class: str) -> list[tuple[int, int]]:
        """(layer, head) pairs of one class, in order."""
        rows = self.table[self.table["head_class"] == head_class]
        return [(int(l), int(h)) for l, h in zip(rows["layer"], rows["head"])]

    def summary(self) -> dict:
        """JSON-ready summary (``summary.json`` of ``intervene heads``)."""
        n = len(self.table)
        counts = self.counts()
        return {
            "model": self.model, "traces": self.traces, "n_traces": len(self.sink_epsilon_per_trace),
            "n_heads": n, "classes": asdict(self.classes),
            "sink_epsilon": self.sink_epsilon,
            "sink_epsilon_sd": float(np.std(self.sink_epsilon_per_trace, ddof=1))
            if len(self.sink_epsilon_per_trace) > 1 else None,
            "counts": counts, "shares": {c: counts[c] / n for c in HEAD_CLASSES},
        }

    def __repr__(self) -> str:
        c = self.counts()
        L = int(self.table["layer"].max()) + 1
        H = int(self.table["head"].max()) + 1
        return (f"HeadMeasures({self.model or 'model'}: {L} layers x {H} heads over "
                f"{len(self.sink_epsilon_per_trace)} traces; Sink-eps(eps={self.classes.epsilon}) = "
                f"{self.sink_epsilon:.3f}; sink {c['sink']}, dormant {c['dormant']}, other {c['other']})")


class _HeadProbe:
    """Extra hooks beside an :class:`Observer`: per-head entropy, output norms, residual norms.

    Enter it *after* the observer: its root pre-hook then runs after the observer's, so it can
    wrap the observer's attention probe and ask the same fused pass for row entropies as well.
    """

    def __init__(self, loaded, block_size: int = 256):
        self.loaded = loaded
        self.block_size = block_size
        self.layers = decoder_layers(loaded.model, loaded.adapter)
        n = len(self.layers)
        self.entropy: list = [None] * n
        self.output_norm: list = [None] * n
        self.residual_median: list = [None] * n
        self._handles: list = []
        self._inner: list = []

    def __enter__(self):
        root = self.loaded.model
        self._handles = [root.register_forward_pre_hook(self._install),
                         root.register_forward_hook(self._uninstall, always_call=True)]
        return self

    def __exit__(self, *exc):
        self._uninstall()
        for h in self._handles:
            h.remove()
        self._handles = []

    def _install(self, *_):
        self._uninstall()
        adapter = self.loaded.adapter
        heads = self.loaded.dims["heads"]
        for idx, block in enumerate(self.layers):
            attn = get_module(block, adapter.attention)
            out_proj = get_module(attn, adapter.attention_out_proj)
            self._inner += [
                block.register_forward_pre_hook(self._on_block_input(idx), with_kwargs=True),
                out_proj.register_forward_pre_hook(self._on_out_proj_input(idx, out_proj, heads)),
            ]
            inner_probe = getattr(attn, "_interventions_probe", None)
            attn._interventions_probe = self._chained_probe(idx, inner_probe)
            attn._heads_inner_probe = inner_probe

    def _uninstall(self, *_):
        for h in self._inner:
            h.remove()
        self._inner = []
        for block in self.layers:
            attn = get_module(block, self.loaded.adapter.attention)
            if hasattr(attn, "_heads_inner_probe"):
                inner = attn._heads_inner_probe
                del attn._heads_inner_probe
                if inner is None:
                    attn.__dict__.pop("_interventions_probe", None)
                else:
                    attn._interventions_probe = inner

    def _on_block_input(self, idx):
        def hook(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            self.residual_median[idx] = float(torch.linalg.vector_norm(h[0].float(), dim=-1).median())
        return hook

    def _on_out_proj_input(self, idx, out_proj, heads):
        def hook(module, args):
            x = args[0][0].float()  # [T, H * Dh]: every head's output, before the projection
            T = x.shape[0]
            w = out_proj.weight.float()  # [D, H * Dh]
            dh = w.shape[1] // heads
            # What head h writes: x_h @ W_h^T with W_h = W[:, h*Dh:(h+1)*Dh]; [H, T, D] at once.
            per_head = torch.einsum("thd,ohd->hto", x.view(T, heads, dh), w.view(w.shape[0], heads, dh))
            self.output_norm[idx] = torch.linalg.vector_norm(per_head, dim=-1).mean(dim=1).cpu()
        return hook

    def _chained_probe(self, idx, inner):
        """The observer's probe, asking the attention pass for row entropies as well."""
        def probe(module, query, key, value, attention_mask, kwargs, sums=None):
            if sums is not None and sums.entropy is not None:
                self.entropy[idx] = (sums.entropy[0] / query.shape[2]).cpu()
            if inner is not None:
                inner(module, query, key, value, attention_mask, kwargs, sums)

        request = getattr(inner, "column_sums", None) or ColumnSumRequest(block_size=self.block_size)
        probe.column_sums = replace(request, entropy=True)
        return probe


@torch.inference_mode()
def _observe_heads(loaded, token_ids, key_position: int, block_size: int) -> dict[str, np.ndarray]:
    ids = torch.as_tensor(token_ids, dtype=torch.long, device=loaded.input_device)[None]
    with Observer(loaded, block_size=block_size) as observer, _HeadProbe(loaded, block_size) as probe:
        loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    obs = observer.collect(ids[0].tolist())
    out = {
        "alpha": obs.sink_scores[:, :, key_position],  # [L, H]
        "entropy": torch.stack(probe.entropy).numpy(),
        "output_norm": torch.stack(probe.output_norm).numpy(),
    }
    residual = np.asarray(probe.residual_median, dtype=np.float64)[:, None]
    out["output_ratio"] = out["output_norm"] / np.where(residual > 0, residual, np.nan)
    return out


def classify_heads(table: pd.DataFrame, classes: HeadClasses) -> pd.Series:
    """The class of each (layer, head) row from its mean alpha and output ratio."""
    sink = table["alpha"] > classes.epsilon
    dormant = sink & (table["output_ratio"] < classes.dormant_ratio)
    return pd.Series(np.where(dormant, "dormant", np.where(sink, "sink", "other")), index=table.index)


def measure_heads(model, traces, *, classes: HeadClasses | None = None, block_size: int = 256,
                  progress: bool = True, traces_label: str = "") -> HeadMeasures:
    """Per-(layer, head) sink measures and classes over ``traces``.

    Args:
        model: a :class:`~interventions.models.load.LoadedModel` or anything ``load_model`` accepts.
        traces: a list of :class:`~interventions.spec.traces.Trace` (or of token-id lists).
        classes: classification thresholds and the sink key (default :class:`HeadClasses`).
        block_size: queries per block in the attention pass.
        progress: show a progress bar.
        traces_label: where the traces came from (recorded in the summary).
    """
    from interventions.models.load import LoadedModel, load_model
    from interventions.progress import track

    loaded = model if isinstance(model, LoadedModel) else load_model(model)
    classes = classes or HeadClasses()
    rows = []
    for i, trace in enumerate(track(traces, description="heads", enabled=progress)):
        ids = trace.token_ids if hasattr(trace, "token_ids") else list(trace)
        if not 0 <= classes.key_position < len(ids) - 1:
            from interventions.errors import UserError
            raise UserError(f"key_position {classes.key_position} is outside trace {i} (length {len(ids)}); "
                            "a sink key needs later queries", field="key_position")
        measured = _observe_heads(loaded, ids, classes.key_position, block_size)
        L, H = measured["alpha"].shape
        frame = pd.DataFrame({"trace": i, "layer": np.repeat(np.arange(L), H), "head": np.tile(np.arange(H), L)})
        for name, values in measured.items():
            frame[name] = np.asarray(values, dtype=np.float64).reshape(-1)
        rows.append(frame)
    per_trace = pd.concat(rows, ignore_index=True)
    grouped = per_trace.groupby(["layer", "head"])
    table = grouped[["alpha", "entropy", "output_norm", "output_ratio"]].mean().reset_index()
    table.insert(3, "alpha_sd", grouped["alpha"].std(ddof=1).to_numpy() if per_trace["trace"].nunique() > 1
                 else np.nan)
    table["head_class"] = classify_heads(table, classes)
    share = per_trace.assign(is_sink=per_trace["alpha"] > classes.epsilon).groupby("trace")["is_sink"].mean()
    return HeadMeasures(table=table, per_trace=per_trace, sink_epsilon=float(share.mean()),
                        sink_epsilon_per_trace=[float(x) for x in share], classes=classes,
                        model=str(loaded.source.given), traces=traces_label)
