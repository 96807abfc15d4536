"""``streaming``: attention restricted to the first k tokens plus the w most recent (StreamingLLM).

Xiao et al. (2024, *Efficient Streaming Language Models with Attention Sinks*) keep a bounded KV
cache of the first ``k`` tokens (the attention sinks) plus a window of the ``w`` most recent ones
(their StartRecent cache) and report that ``k = 0`` (window attention) breaks prediction once the
text outgrows the window while ``k >= 1`` (often 4) restores most of it. Here that cache is an
attention edit: in the chosen layers a query at position p attends only to keys ``j < k`` and
``p - w < j <= p``; every other key gets probability exactly 0 and the softmax renormalises.

Position handling: tokens keep their original positions (rotary phases as in full attention).
StreamingLLM instead re-indexes positions inside its cache, so a kept sink sits ``w`` positions
before the query rather than ``p``; with rotary embeddings the relative distances inside the
window are the same either way, only the distance to the kept first tokens differs. This edit
therefore measures eviction alone, without the re-indexing; ``experiments/streaming_sinks``
reports it that way.

Every ``keep_first`` value is its own condition. The edits start at position ``k + w`` (queries
before it see every key anyway), so the runner recomputes only from there.
"""

from __future__ import annotations

from typing import ClassVar, Literal

from pydantic import Field, field_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, InterventionBase, register_kind
from interventions.spec.fields import LayerRange, concrete, layer_label, layer_spec_validator

from .base import attention_edits

ALL_LAYERS = 1024
"""More layers than any supported model has: ``layers: all`` expands to these, cut to the model's depth."""


@register_kind
class Streaming(InterventionBase):
    """Evict keys outside the first ``keep_first`` and the last ``window`` (one condition per keep_first)."""

    LAYER_FIELDS: ClassVar[tuple[str, ...]] = ("layers",)
    COMPILES_TO: ClassVar[str] = "attention"
    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "keep_first": EffectColumn("streaming: first tokens every query keeps (the sinks)", -1),
        "window": EffectColumn("streaming: most recent tokens every query keeps", -1),
    }

    kind: Literal["streaming"] = Field("streaming", description="StartRecent attention: first k plus last w tokens.")
    keep_first: int | list[int] = Field(description="Tokens kept at the start (k); a list gives one condition each.")
    window: int = Field(ge=1, description="Most recent tokens every query attends to (w), itself included.")
    layers: int | list[int] | LayerRange | Literal["all"] = Field(
        "all", description="Layers restricted: all (the default, as a KV cache would be), int, list or {from, to}.")

    _layers = field_validator("layers", mode="before")(lambda v: v if v == "all" else layer_spec_validator(())(v))

    @field_validator("keep_first")
    @classmethod
    def _keep_first(cls, v):
        values = v if isinstance(v, list) else [v]
        if not values or any(k < 0 for k in values):
            raise ValueError("keep_first must be >= 0 (0: window attention alone)")
        return v

    def conditions(self, index: int) -> list[Condition]:
        label = "all" if self.layers == "all" else layer_label(self.layers)
        # "all": every layer the model has; the runner drops layers past the model's depth.
        layer = list(range(ALL_LAYERS)) if self.layers == "all" else concrete(self.layers)
        ks = self.keep_first if isinstance(self.keep_first, list) else [self.keep_first]
        return [self._condition(index, f"streaming.{label}.k{k}.w{self.window}", site=None, layer=layer,
                                params={"keep_first": k, "window": self.window}) for k in ks]

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        k, w = int(condition.params["keep_first"]), int(condition.params["window"])
        return [Edit("streaming", layer, [k + w], params={"keep_first": k, "window": w}) for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        return {"keep_first": int(condition.params["keep_first"]), "window": int(condition.params["window"])}

    @classmethod
    def api_edits(cls, loaded, *, layers, positions=(), site=None, keep_first: int = 4, window: int = 256, **_):
        """``Streaming(layer=range(L), positions=[], keep_first=4, window=256)``: positions are not used."""
        return [Edit("streaming", layer, [keep_first + window], params={"keep_first": int(keep_first),
                                                                        "window": int(window)}) for layer in layers]

    @classmethod
    def merge_key(cls, edit):
        return None

    @classmethod
    def install(cls, loaded, edits):
        """Put the StartRecent restriction on each edited layer's attention for the duration of the block."""
        from interventions.models.attention import AttentionEdit

        def build(previous, edit):
            return AttentionEdit(masked_keys=previous.masked_keys if previous else (),
                                 redirect_to=previous.redirect_to if previous else None,
                                 window=int(edit.params["window"]), keep_first=int(edit.params["keep_first"]))

        return attention_edits(loaded, edits, build)
