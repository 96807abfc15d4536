"""``add``: add a vector at a site for the target tokens (activation addition / steering).

The vector is ``coefficient * direction``; each coefficient is its own condition. The direction is

* ``primary_sink``: the primary sink's own value at the same site and layer in the clean run of
  the same trace (the sink direction, for ``block_output``: the massive-activation state);
* ``{file: path}``: a ``.pt`` or ``.npy`` file holding a [D] vector or an [L, D] array (one row
  per layer); the path is relative to the spec file;
* ``{mean_diff: [a, b]}``: the mean of the site's clean value over target set ``a`` minus that
  over target set ``b``, in the same trace and layer (a trace where either set is empty gets no edit).

With ``normalize: true`` (the default) the direction is scaled to norm 1 first, so
``coefficient`` is the norm of what is added.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AfterValidator, Field, field_validator

from interventions.spec.conditions import Condition, Edit, EffectColumn, register_kind
from interventions.spec.fields import SpecModel, each_once, fail, show

from .base import SiteIntervention


class FromFile(SpecModel):
    """A direction read from a file."""

    file: str = Field(description="A .pt or .npy file with a [D] vector or an [L, D] array (relative to the spec).")


class MeanDiff(SpecModel):
    """A direction as the difference of two target sets' mean values."""

    mean_diff: list[str] = Field(min_length=2, max_length=2,
                                 description="Two target set names [a, b]: mean over a minus mean over b.")


def _finite(v: float) -> float:
    if not math.isfinite(v):
        raise fail(f"{show(v)} is not a finite number — coefficients are numbers such as -4, 1, 8")
    return v


@register_kind
class Add(SiteIntervention):
    """Add ``coefficient * direction`` to a site's output for the target tokens; each coefficient is a condition."""

    EFFECT_COLUMNS: ClassVar[dict[str, EffectColumn]] = {
        "coefficient": EffectColumn("add: the coefficient of the added direction (NaN for other kinds)"),
        "direction": EffectColumn("add: primary_sink | file:<name> | mean_diff:<a>-<b> (empty for other kinds)", ""),
    }

    kind: Literal["add"] = Field("add", description="Add a vector to the site output of the target tokens.")
    direction: Literal["primary_sink"] | FromFile | MeanDiff = Field(
        description="primary_sink, {file: path} or {mean_diff: [set_a, set_b]}.")
    coefficients: list[Annotated[float, AfterValidator(_finite)]] = Field(
        min_length=1, description="Multipliers of the direction, each its own condition.")
    normalize: bool = Field(True, description="Scale the direction to norm 1 first (coefficient = added norm).")

    _unique = field_validator("coefficients")(each_once("coefficient"))

    def label(self) -> str:
        d = self.direction
        if isinstance(d, FromFile):
            return f"file:{Path(d.file).stem}"
        if isinstance(d, MeanDiff):
            return f"mean_diff:{d.mean_diff[0]}-{d.mean_diff[1]}"
        return d

    def conditions(self, index: int) -> list[Condition]:
        direction = self.direction if isinstance(self.direction, str) else self.direction.model_dump()
        return [self._site_condition(index, f".{self.label()}.c{c:g}",
                                     params={"coefficient": c, "direction": direction, "label": self.label(),
                                             "normalize": self.normalize})
                for c in self.coefficients]

    def warnings(self, index: int) -> list[str]:
        return [f"interventions[{index}].coefficients[{j}]: 0 adds nothing (identity) — fine as a sanity check, "
                "otherwise remove it" for j, c in enumerate(self.coefficients) if c == 0]

    @classmethod
    def referenced_sets(cls, raw: dict) -> list[tuple[str, Any]]:
        d = raw.get("direction")
        pair = d.get("mean_diff") if isinstance(d, dict) else None
        return [(f"direction.mean_diff[{j}]", name) for j, name in enumerate(pair)] if isinstance(pair, list) else []

    @classmethod
    def resolve_paths(cls, raw: dict, base_dir, check_files: bool) -> tuple[dict, list[str]]:
        d = raw.get("direction")
        if not (isinstance(d, dict) and isinstance(d.get("file"), str) and d["file"].strip()):
            return raw, []
        path = Path(d["file"]).expanduser()
        resolved = (path if path.is_absolute() else Path(base_dir) / path).resolve()
        problems = []
        if check_files and not resolved.is_file():
            problems.append(f"direction.file: {show(d['file'])} does not exist (looked for {resolved}) — give a .pt "
                            "or .npy file; relative paths are relative to the spec file's folder")
        elif resolved.suffix not in (".pt", ".npy"):
            problems.append(f"direction.file: {show(d['file'])} is not a .pt or .npy file — save the direction "
                            "with torch.save or numpy.save")
        return {**raw, "direction": {**d, "file": str(resolved)}}, problems

    # -- run --------------------------------------------------------------------------------

    @classmethod
    def trace_state(cls, conditions, trace) -> dict[str, list]:
        """Per condition id: the added vector per layer (None where it cannot be made in this trace)."""
        import torch

        L = trace.loaded.dims["layers"]
        state: dict[str, list] = {}
        for c in conditions:
            direction = c.params["direction"]
            if direction == "primary_sink":
                primary = [s.position for s in trace.sinks if s.kind == "primary"] or [0]
                rows = trace.site_values([(c.site, layer) for layer in range(L)],
                                         reduce=lambda site, layer, out: out[primary[0]].clone())
                vectors = [rows[(c.site, layer)] for layer in range(L)]
            elif "file" in direction:
                vectors = _file_vectors(direction["file"], L, trace.loaded.dims["hidden"])
            else:
                a, b = ([t.position for t in trace.sets.get(name, [])] for name in direction["mean_diff"])
                if not a or not b:
                    state[c.id] = [None] * L
                    continue
                rows = trace.site_values(
                    [(c.site, layer) for layer in range(L)],
                    reduce=lambda site, layer, out: out[a].float().mean(0) - out[b].float().mean(0))
                vectors = [rows[(c.site, layer)] for layer in range(L)]
            dtype = next(trace.loaded.model.parameters()).dtype
            out = []
            for layer, v in enumerate(vectors):
                v = torch.as_tensor(v).float()
                if c.params["normalize"]:
                    norm = torch.linalg.vector_norm(v)
                    v = v / norm if norm > 0 else v
                device = _layer_device(trace.loaded, c.site, layer)
                out.append((c.params["coefficient"] * v).to(device=device, dtype=dtype))
            state[c.id] = out
        return state

    @classmethod
    def edits_for(cls, condition, target, layers, state):
        vectors = state[condition.id]
        if any(vectors[layer] is None for layer in layers):
            return []
        return [Edit("add", layer, [target.position], site=condition.site, vector=vectors[layer],
                     factor=condition.params["coefficient"]) for layer in layers]

    @classmethod
    def effect_values(cls, condition, target, layer, edited_layers, state=None) -> dict:
        return {"coefficient": float(condition.params["coefficient"]), "direction": condition.params["label"]}

    @classmethod
    def api_edits(cls, loaded, *, layers, positions, site, vector, coefficient: float = 1.0, normalize: bool = False):
        """``Add(site=..., layer=..., positions=..., vector=v, coefficient=c)``: add ``c * v`` (``normalize``: unit v)."""
        import torch

        v = torch.as_tensor(vector).float()
        if normalize:
            v = v / torch.linalg.vector_norm(v)
        dtype = next(loaded.model.parameters()).dtype
        return [Edit("add", layer, list(positions), site=site, factor=float(coefficient),
                     vector=(coefficient * v).to(device=_layer_device(loaded, site, layer), dtype=dtype))
                for layer in layers]

    # -- compile ----------------------------------------------------------------------------

    @classmethod
    def pyvene_intervention(cls, edit, dims):
        from interventions.compile.pyvene_compat import pv

        return pv.AdditionIntervention(source_representation=edit.vector, embed_dim=dims["hidden"])

    @classmethod
    def reference_value(cls, edit, original):
        return original + edit.vector.to(original.dtype)


def _layer_device(loaded, site: str, layer: int):
    from interventions.observation.capture import site_module

    return next(site_module(loaded, site, layer).parameters()).device


def _file_vectors(path: str, n_layers: int, hidden: int) -> list:
    import numpy as np
    import torch

    from interventions.errors import UserError

    data = np.load(path) if path.endswith(".npy") else torch.load(path, map_location="cpu", weights_only=True)
    t = torch.as_tensor(np.asarray(data) if not isinstance(data, torch.Tensor) else data).float()
    if t.shape == (hidden,):
        return [t] * n_layers
    if t.shape == (n_layers, hidden):
        return list(t)
    raise UserError(f"direction file {path} holds shape {tuple(t.shape)}; this model needs [{hidden}] or "
                    f"[{n_layers}, {hidden}]", field="interventions.direction")
