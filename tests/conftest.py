"""Shared fixtures: tiny models of every family and the loaded planted model."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from interventions.models.adapters import adapter_for
from interventions.models.attention import make_hookable
from interventions.models.load import LoadedModel, ModelSource
from interventions.testbed.tiny import TINY_CONFIGS, tiny_model

FAMILIES = sorted(TINY_CONFIGS)
REPO = Path(__file__).resolve().parent.parent


def loaded_tiny(family: str, *, layers: int = 3, attn: str = "sdpa", seed: int = 0) -> LoadedModel:
    """A random-init tiny model wrapped exactly as load_model wraps a real one."""
    from interventions.testbed.tokenizer_bytes import byte_tokenizer

    model = tiny_model(family, layers=layers, attn_implementation=attn, seed=seed)
    make_hookable(model)
    return LoadedModel(model=model, tokenizer=byte_tokenizer(), adapter=adapter_for(model.config),
                       source=ModelSource(f"tiny:{family}", f"tiny:{family}"), dtype="float32", device="cpu",
                       attn_implementation=attn)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """Testbed models are cached per session (built once, loaded by path like any model)."""
    d = tmp_path_factory.mktemp("cache")
    os.environ["INTERVENTIONS_CACHE"] = str(d)
    return d


@pytest.fixture(scope="session")
def planted(cache_dir):
    from interventions import load_model

    return load_model("testbed:planted", dtype="float32")


@pytest.fixture(scope="session")
def planted_truth(planted):
    from interventions.testbed.planted import load_truth

    return load_truth(planted.source.path)


@pytest.fixture(scope="session")
def norm_scale_run(cache_dir, tmp_path_factory):
    """``specs/norm_scale.yaml`` on the planted model (8 traces, statistics and report), run once per
    session: the README's H2 numbers and the run summary table are checked against it."""
    from interventions.pipeline import run_spec

    return run_spec(REPO / "specs" / "norm_scale.yaml", run_dir=tmp_path_factory.mktemp("norm_scale") / "run",
                    progress=False)
