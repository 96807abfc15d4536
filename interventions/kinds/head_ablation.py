"""``head_ablation``: zero or mean-replace chosen attention heads' outputs (dormant / sink heads).

What a head writes is its slice of the attention output before the output projection:
``o_proj(concat_h o^h) = sum_h W_O^h o^h``. Zeroing head h's slice removes exactly its
contribution; ``mode: mean`` writes instead the head's mean output over the trace's clean
non-target positions (mean ablation, which keeps the head's average contribution). The edit is a
forward pre-hook on the output projection (the adapter's ``attention_out_proj``), so it sees the
head outputs of the forward being run, also of a suffix run over a cached prefix.

Heads are chosen statically (``heads: [0, 3]`` or ``all``) or from the clean run's own head
classes (``heads: {class: sink}`` or ``dormant``, with the thresholds of
:class:`interventions.observation.heads.HeadClasses`), per trace, among the ``layers`` given.
``scope: targets`` edits the target positions' head outputs (their queries); ``scope: all``
edits every position of the trace (the head is silenced, as in dormant-head ablations).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, InterventionBase, register_kind
from interventions.spec.fields import LayerRange, concrete, layer_label, layer_spec_validator


class HeadClassSelector(BaseModel):
    """Heads chosen from the clean run's per-head measures (see :mod:`interventions.observation.heads`)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    head_class: Literal["sink", "dormant", "sink_or_dormant"] = Field(
        alias="class", description="Which class to ablate: sink, dormant, or both (sink_or_dormant).")
    epsilon: float = Field(0.3, gt=0, lt=1, description="Sink head: alpha on the first token above this.")
    dormant_ratio: float = Field(0.05, ge=0, description="Dormant: output norm below this x the residual median.")


@register_kind
class HeadAblation(InterventionBase):
    """Zero (or mean-replace) chosen heads' outputs at the given layers (one condition)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    COMPILES_TO: ClassVar[str] = "attention"
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "heads": EffectColumn("head_ablation: layer.head pairs ablated for this target, e.g. '5.0,5.3'", ""),
        "head_mode": EffectColumn("head_ablation: zero | mean", ""),
    }

    kind: Literal["head_ablation"] = Field("head_ablation", description="Ablate attention heads' outputs.")
    layers: int | list[int] | LayerRange = Field(description="Layers whose heads are ablated: int, list or {from, to}.")
    heads: list[int] | Literal["all"] | HeadClassSelector = Field(
        description="Head indices, all, or {class: sink | dormant | sink_or_dormant} from the clean run.")
    mode: Literal["zero", "mean"] = Field("zero", description="zero, or the head's clean mean output (non-targets).")
    scope: Literal["targets", "all"] = Field("targets", description="Positions edited: the targets, or every position.")

    _layers = field_validator("layers", mode="before")(lambda v: layer_spec_validator(())(v))

    def _heads_label(self) -> str:
        if isinstance(self.heads, HeadClassSelector):
            return f"class-{self.heads.head_class}"
        return "all" if self.heads == "all" else "h" + "-".join(map(str, self.heads))

    def conditions(self, index: int) -> list[Condition]:
        cid = f"head_ablation.{self.mode}.{layer_label(self.layers)}.{self._heads_label()}.{self.scope}"
        selector = self.heads.model_dump() if isinstance(self.heads, HeadClassSelector) else self.heads
        return [self._condition(index, cid, site=None, layer=concrete(self.layers),
                                params={"heads": selector, "mode": self.mode, "scope": self.scope})]

    # -- run side ---------------------------------------------------------------------------
    @classmethod
    def trace_state(cls, conditions, trace):
        """Per trace: the heads each condition ablates per layer, and the clean head means for ``mode: mean``."""
        n_heads = trace.loaded.dims["heads"]
        state = {"length": len(trace.token_ids), "heads": {}, "means": {}}
        classes = None
        for c in conditions:
            selector = c.params["heads"]
            if isinstance(selector, dict):
                if classes is None:
                    classes = _clean_head_classes(trace, selector)
                wanted = {"sink_or_dormant": ("sink", "dormant")}.get(selector["head_class"], (selector["head_class"],))
                state["heads"][c.id] = {layer: sorted(h for (l, h), cls_ in classes.items() if l == layer and
                                                      cls_ in wanted) for layer in range(trace.loaded.dims["layers"])}
            else:
                heads = list(range(n_heads)) if selector == "all" else [int(h) for h in selector]
                state["heads"][c.id] = {layer: heads for layer in range(trace.loaded.dims["layers"])}
            if c.params["mode"] == "mean":
                exclude = {t.position for name in c.targets for t in trace.sets.get(name, [])}
                state["means"][c.id] = _clean_head_means(trace, exclude)
        return state

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        positions = list(range(state["length"])) if condition.params["scope"] == "all" else [target.position]
        edits = []
        for layer in layers:
            heads = state["heads"][condition.id].get(layer, [])
            if not heads:
                continue
            means = state["means"].get(condition.id)
            edits.append(Edit("head_ablation", layer, positions, params={
                "heads": tuple(heads), "mode": condition.params["mode"],
                "means": None if means is None else means[layer]}))
        return edits

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        heads = state["heads"].get(condition.id, {}) if state else {}
        pairs = [f"{l}.{h}" for l in edited_layers for h in heads.get(l, [])]
        return {"heads": ",".join(pairs), "head_mode": condition.params["mode"]}

    @classmethod
    def api_edits(cls, loaded, *, layers, positions, site=None, heads=(0,), mode: str = "zero", means=None, **_):
        """``HeadAblation(layer=5, positions=[...], heads=[0, 3])``; ``means``: {layer: [H, Dh]} for mode mean."""
        return [Edit("head_ablation", layer, list(positions), params={
            "heads": tuple(int(h) for h in heads), "mode": mode, "means": None if means is None else means[layer]})
            for layer in layers]

    @classmethod
    def merge_key(cls, edit):
        return None

    @classmethod
    def reference_value(cls, edit, original):
        """Oracle on the output projection's input rows ([N, H * Dh] in, [N, H * Dh] out)."""
        out = original.clone()
        dh = out.shape[-1] // edit.params["n_heads"]
        for h in edit.params["heads"]:
            out[:, h * dh:(h + 1) * dh] = 0 if edit.params["means"] is None else edit.params["means"][h]
        return out

    @classmethod
    @contextmanager
    def install(cls, loaded, edits):
        """Pre-hooks on each edited layer's output projection, removed on exit (also after an error)."""
        import torch

        from interventions.models.adapters import decoder_layers, get_module

        layers = decoder_layers(loaded.model, loaded.adapter)
        n_heads = loaded.dims["heads"]
        handles = []
        start = {"position": 0}

        def first_position(module, args, kwargs):
            # A suffix forward over a cached prefix starts at cache_position[0]; positions are absolute.
            cp = kwargs.get("cache_position")
            pid = kwargs.get("position_ids")
            start["position"] = int(cp[0]) if cp is not None else (int(pid[0, 0]) if pid is not None else 0)

        def hook_for(edit):
            def hook(module, args):
                x = args[0]
                dh = x.shape[-1] // n_heads
                rows = [p - start["position"] for p in edit.positions if 0 <= p - start["position"] < x.shape[1]]
                if not rows:
                    return None
                x = x.clone()
                idx = torch.tensor(rows, device=x.device)
                for h in edit.params["heads"]:
                    if edit.params["mode"] == "mean":
                        x[:, idx, h * dh:(h + 1) * dh] = edit.params["means"][h].to(x.device, x.dtype)
                    else:
                        x[:, idx, h * dh:(h + 1) * dh] = 0
                return (x,) + tuple(args[1:])
            return hook

        try:
            handles.append(layers[0].register_forward_pre_hook(first_position, with_kwargs=True))
            for edit in edits:
                attn = get_module(layers[edit.layer], loaded.adapter.attention)
                out_proj = get_module(attn, loaded.adapter.attention_out_proj)
                handles.append(out_proj.register_forward_pre_hook(hook_for(edit)))
            yield
        finally:
            for h in handles:
                h.remove()


def _clean_head_classes(trace, selector: dict) -> dict[tuple[int, int], str]:
    """(layer, head) -> class on this trace's clean forward."""
    from interventions.observation.heads import HeadClasses, measure_heads

    classes = HeadClasses(epsilon=selector["epsilon"], dormant_ratio=selector["dormant_ratio"])
    table = measure_heads(trace.loaded, [trace.token_ids], classes=classes, progress=False).table
    return {(int(l), int(h)): c for l, h, c in zip(table["layer"], table["head"], table["head_class"])}


def _clean_head_means(trace, exclude: set[int]) -> dict:
    """layer -> [H, Dh]: each head's mean clean output over the positions not in ``exclude``."""
    import torch

    from interventions.models.adapters import decoder_layers, get_module

    loaded = trace.loaded
    n_heads = loaded.dims["heads"]
    keep = torch.ones(len(trace.token_ids), dtype=torch.bool)
    keep[sorted(p for p in exclude if p < len(keep))] = False
    means, handles = {}, []

    def hook(layer):
        def fn(module, args):
            x = args[0][0]
            means[layer] = x[keep.to(x.device)].float().mean(0).view(n_heads, -1).to(x.dtype)
        return fn

    try:
        for layer, block in enumerate(decoder_layers(loaded.model, loaded.adapter)):
            out_proj = get_module(get_module(block, loaded.adapter.attention), loaded.adapter.attention_out_proj)
            handles.append(out_proj.register_forward_pre_hook(hook(layer)))
        with torch.inference_mode():
            ids = torch.tensor([trace.token_ids], device=loaded.input_device)
            loaded.model(input_ids=ids, use_cache=False, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    return means
