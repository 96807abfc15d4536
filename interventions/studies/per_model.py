"""Run one measurement on each real-model configuration of an experiment (the real-only study kinds).

``known_answers`` and ``streaming`` studies have no planted run: their default mode runs every
configuration under ``real:`` in turn, ``--real --config NAME`` one of them. This loads each
model, tokenizes its traces as the tokenizer does, hands both to the study's measurement, writes
``<out>/<config name>.json`` and frees the model before the next one.
"""

from __future__ import annotations

import gc
import json
from collections.abc import Callable
from pathlib import Path


def run_per_model(exp, mode: str, settings: dict, out, overrides: dict,
                  measure: Callable[[object, list, dict], dict]) -> dict:
    """``{"models": {name: record}}``; ``measure(loaded, traces, cfg)`` returns one model's record."""
    from interventions.models.load import load_model
    from interventions.progress import console
    from interventions.spec.traces import load_traces

    configs = ([(name, {**exp.mode(name)[1], **overrides}) for name in exp.real] if mode == "planted"
               else [(mode, settings)])
    measured: dict = {"models": {}}
    missing = exp.missing_models() if mode == "planted" else {}
    if missing:  # the default mode measures the cached models and names the fix for the others
        measured["skipped_models"] = {name: f"{folder} does not exist" for name, folder in missing.items()}
        console.print(f"[yellow]{exp.name}: skipped {', '.join(missing)} (not cached); "
                      "`intervene testbed fetch-gguf` caches them[/yellow]", highlight=False, soft_wrap=True)
    for name, cfg in configs:
        if name in missing:
            continue
        console.print(f"[bold]{exp.name}[/bold]: {name} ({cfg['model']})", highlight=False, soft_wrap=True)
        loaded = load_model(cfg["model"], dtype=cfg.get("dtype", "float32"), device=cfg.get("device", "cpu"))
        traces = load_traces(cfg["traces"], loaded.tokenizer, limit=cfg.get("limit"), max_tokens=cfg.get("max_tokens"),
                             chat_template=bool(cfg.get("chat_template", False)))
        record = measure(loaded, traces, cfg)
        record["model"] = loaded.describe()
        record["first_tokens"] = loaded.tokenizer.convert_ids_to_tokens(traces[0].token_ids[:6])
        measured["models"][name] = record
        Path(out, f"{name}.json").write_text(json.dumps(record, indent=2, default=float) + "\n")
        del loaded
        gc.collect()
    return measured
