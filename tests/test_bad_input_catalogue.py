"""The bad-input catalogue: every way a user can get a run wrong, driven through the CLI.

Each case must end in ONE line ``error: <field>: <what was given> ... <what to do>``, exit code
2, and nothing half-written (no run folder; an existing folder byte-for-byte untouched). Cases
whose problem is visible in the spec, the config or the tokenizer must be refused before any
weights load: ``AutoModelForCausalLM.from_pretrained`` is patched to record a call.

    pytest tests/test_bad_input_catalogue.py -v        # one line per case id
    python tests/test_bad_input_catalogue.py           # just the list of case ids
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import pytest
import torch
import yaml
from typer.testing import CliRunner

from interventions.cli.main import app

runner = CliRunner()

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Pack my box with five dozen liquor jugs."]


# --------------------------------------------------------------------------------------------
# model folders and files the cases point at (built once per module)


@pytest.fixture(scope="module")
def fx(tmp_path_factory, cache_dir):
    from transformers import GPT2Config, GPT2LMHeadModel

    from interventions.testbed.tiny import save_tiny

    root = tmp_path_factory.mktemp("catalogue")
    save_tiny("qwen2", root / "tiny", layers=3)  # random init: no secondary sinks; 512 positions
    (root / "no-config").mkdir()
    (root / "no-tokenizer").mkdir()
    for f in ("config.json", "model.safetensors"):
        shutil.copy(root / "tiny" / f, root / "no-tokenizer" / f)
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=258, bos_token_id=0,
                               eos_token_id=1)).save_pretrained(root / "gpt2")
    (root / "traces.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in TEXTS))
    return root


def base_spec(fx: Path, **over) -> dict:
    spec = {
        "name": "catalogue", "model": str(fx / "tiny"), "traces": str(fx / "traces.jsonl"), "dtype": "float32",
        "targets": {"fixed": {"select": "positions", "positions": [3]}},
        "interventions": [{"kind": "scale", "site": "mlp_output", "layer": 1, "targets": ["fixed"],
                           "factors": [2]}],
        "report": False,
    }
    spec.update(over)
    return spec


def with_intervention(fx: Path, **over) -> dict:
    iv = {"kind": "scale", "site": "mlp_output", "layer": 1, "targets": ["fixed"], "factors": [2], **over}
    return base_spec(fx, interventions=[iv])


@dataclass
class Case:
    id: str
    needle: str
    """Text the error line must contain."""
    spec: Callable | None = None
    """fx -> spec dict or YAML text (for `intervene run SPEC --results R`)."""
    argv: Callable | None = None
    """(fx, tmp, spec_path, results) -> full argv, when the case needs more than `run SPEC --results R`."""
    setup: Callable | None = None
    """(fx, tmp, monkeypatch) -> None: files or patches the case needs."""
    weights: bool = False
    """True when the problem can only show after the weights loaded (a clean pass is needed)."""
    existing: Callable | None = None
    """(tmp) -> a folder that exists before the command and must be left untouched."""
    skip: Callable | None = field(default=None)


def _traces_file(text: str):
    def setup(fx, tmp, mp):
        (tmp / "bad.jsonl").write_text(text)
    return setup



def _spec_with_traces(fx, tmp):
    return base_spec(fx, traces=str(tmp / "bad.jsonl"))


def _not_writable(fx, tmp, spec, results):
    if os.geteuid() == 0:  # root writes through permission bits: use a read-only mount instead
        return ["run", str(spec), "--results", "/sys/interventions-results"]
    ro = tmp / "read-only"
    ro.mkdir()
    ro.chmod(0o555)
    return ["run", str(spec), "--results", str(ro / "results")]


def _validate(fx, tmp, spec, results):
    return ["validate", str(spec)]


def _existing_run(tmp):
    d = tmp / "old-run"
    d.mkdir(exist_ok=True)
    (d / "manifest.json").write_text(json.dumps({"spec_hash": "0000000000000000", "traces_completed": [0]}))
    (d / "keep.txt").write_text("old results")
    return d


def _no_bf16(fx, tmp, mp):
    from interventions.models import load as models

    mp.setattr(models, "_DTYPE_PROBES", {})
    mp.setattr(models, "_dtype_probe", lambda dtype, device: "no bfloat16 kernels on this CPU")


def _little_memory(fx, tmp, mp):
    from interventions.models import memory

    mp.setattr(memory, "available_memory", lambda device: (1 << 20, "this machine's RAM"))


def _planted_spec(fx):
    return base_spec(fx, model="testbed:planted", traces="testbed", limit=2)


CASES = [
    # ---- the spec file itself ----------------------------------------------------------------
    Case("malformed_yaml", "line", spec=lambda fx: "name: x\ninterventions: [\n  - {kind: zero\n"),
    Case("unknown_top_level_key", "unknown key 'colour'", spec=lambda fx: base_spec(fx, colour="red")),
    Case("unknown_intervention_kind", "is not a known kind", spec=lambda fx: with_intervention(fx, kind="scal")),
    Case("unknown_site", "is not a known site", spec=lambda fx: with_intervention(fx, site="mlp_out")),
    Case("empty_factor_list", "factors: [] is empty", spec=lambda fx: with_intervention(fx, factors=[])),
    Case("negative_factor", "factors must be > 0", spec=lambda fx: with_intervention(fx, factors=[-2])),
    Case("factor_zero_suggests_zero", "use kind: zero", spec=lambda fx: with_intervention(fx, factors=[0])),
    Case("unknown_target_selector", "is not a known selector",
         spec=lambda fx: base_spec(fx, targets={"fixed": {"select": "secondary"}})),
    Case("max_tokens_below_two", "max_tokens: 1 is too small", spec=lambda fx: base_spec(fx, max_tokens=1)),
    Case("spec_name_with_dotdot", "not a safe folder name", spec=lambda fx: base_spec(fx, name="../escape")),
    Case("attn_flash_attention_2", "use one of sdpa, eager",
         spec=lambda fx: base_spec(fx, attn_implementation="flash_attention_2")),
    Case("trace_file_missing", "does not exist", spec=lambda fx: base_spec(fx, traces=str(fx / "missing.jsonl"))),
    # ---- against the model's config ----------------------------------------------------------
    Case("layer_out_of_range", "out of range — this model has 3 layers",
         spec=lambda fx: with_intervention(fx, layer=7)),
    Case("model_folder_without_config", "has no config.json",
         spec=lambda fx: base_spec(fx, model=str(fx / "no-config"))),
    Case("architecture_not_in_adapter_table", "architecture 'gpt2' is not supported",
         spec=lambda fx: base_spec(fx, model=str(fx / "gpt2"))),
    Case("device_cuda_without_gpu", "no CUDA GPU is visible", spec=lambda fx: base_spec(fx, device="cuda"),
         skip=lambda: torch.cuda.is_available()),
    Case("dtype_bfloat16_cpu_cannot", "bfloat16 does not work on cpu", spec=lambda fx: base_spec(fx, dtype="bfloat16"),
         setup=_no_bf16),
    Case("memory_estimate_exceeds_free", "pass --force", spec=lambda fx: base_spec(fx), setup=_little_memory),
    # ---- tokenizer and traces (still before the weights) --------------------------------------
    Case("tokenizer_missing", "has no tokenizer files", spec=lambda fx: base_spec(fx, model=str(fx / "no-tokenizer"))),
    Case("chat_template_missing", "has no chat template", spec=lambda fx: base_spec(fx, chat_template=True)),
    Case("token_string_is_several_tokens", "is 2 tokens for this tokenizer",
         spec=lambda fx: base_spec(fx, targets={"fixed": {"select": "tokens", "tokens": [" ~"]}})),
    Case("trace_file_empty", "is empty", setup=_traces_file("\n\n"), argv=None),
    Case("trace_file_not_jsonl", "line 1 is not JSON", setup=_traces_file("text: not json\n")),
    Case("trace_line_without_text", "line 2 has no non-empty 'text'",
         setup=_traces_file(json.dumps({"text": "ok"}) + "\n" + json.dumps({"title": "no text"}) + "\n")),
    Case("trace_longer_than_max_positions", "takes at most 512",
         setup=_traces_file(json.dumps({"text": "a" * 600}) + "\n")),
    Case("trace_file_binary", "is not UTF-8 text", setup=lambda fx, tmp, mp: (tmp / "bad.jsonl").write_bytes(
        b'{"text": "ok"}\n' + bytes(range(128, 256)) * 4 + b"\n")),
    Case("trace_prompt_without_output", "has a 'prompt' but no 'output'",
         setup=_traces_file(json.dumps({"prompt": "What is 2 + 2?"}) + "\n")),
    # ---- runtime imports ---------------------------------------------------------------------
    Case("pyvene_not_importable", "pip install --no-deps pyvene==0.1.8", spec=lambda fx: base_spec(fx),
         setup=lambda fx, tmp, mp: mp.setitem(sys.modules, "pyvene", None)),
    # ---- intervene validate: everything a run checks before its weights ------------------------
    Case("validate_token_string_is_several_tokens", "is 2 tokens for this tokenizer",
         spec=lambda fx: base_spec(fx, targets={"fixed": {"select": "tokens", "tokens": [" ~"]}}), argv=_validate),
    Case("validate_device_cuda_without_gpu", "no CUDA GPU is visible", spec=lambda fx: base_spec(fx, device="cuda"),
         argv=_validate, skip=lambda: torch.cuda.is_available()),
    Case("validate_trace_longer_than_max_positions", "takes at most 512", spec="bad-traces", argv=_validate,
         setup=_traces_file(json.dumps({"text": "a" * 600}) + "\n")),
    Case("validate_trace_file_binary", "is not UTF-8 text", spec="bad-traces", argv=_validate,
         setup=lambda fx, tmp, mp: (tmp / "bad.jsonl").write_bytes(bytes(range(128, 256)))),
    Case("validate_prompt_without_output", "has a 'prompt' but no 'output'", spec="bad-traces", argv=_validate,
         setup=_traces_file(json.dumps({"prompt": "What is 2 + 2?"}) + "\n")),
    # ---- output folder -----------------------------------------------------------------------
    Case("output_not_writable", "cannot write to", spec=lambda fx: base_spec(fx), argv=_not_writable),
    Case("output_parent_is_a_file", "is a file, not a folder", spec=lambda fx: base_spec(fx),
         argv=lambda fx, tmp, spec, results: (tmp.joinpath("file").write_text("x"),
                                              ["run", str(spec), "--results", str(tmp / "file" / "results")])[1]),
    Case("existing_run_dir_without_resume", "pass --overwrite to replace them or --resume",
         spec=lambda fx: base_spec(fx), existing=_existing_run,
         argv=lambda fx, tmp, spec, results: ["run", str(spec), "--run-dir", str(tmp / "old-run")]),
    Case("resume_with_different_spec_hash", "was made from a different spec", spec=lambda fx: base_spec(fx),
         existing=_existing_run,
         argv=lambda fx, tmp, spec, results: ["run", str(spec), "--resume", str(tmp / "old-run")]),
    Case("resume_without_manifest", "no manifest.json to resume from", spec=lambda fx: base_spec(fx),
         argv=lambda fx, tmp, spec, results: (tmp.joinpath("empty-run").mkdir(),
                                              ["run", str(spec), "--resume", str(tmp / "empty-run")])[1]),
    # ---- only visible after a clean pass (weights needed) ------------------------------------
    Case("l_start_without_any_sink", "found no secondary sink", weights=True,
         spec=lambda fx: with_intervention(fx, layer="l_start")),
    Case("targets_resolve_to_nothing", "resolved to no position in every trace", weights=True,
         spec=lambda fx: base_spec(fx, targets={"fixed": {"select": "tokens", "tokens": ["Z"]}})),
    # ---- intervene detect --------------------------------------------------------------------
    Case("detect_attn_flex_attention", "use one of sdpa, eager",
         argv=lambda fx, tmp, spec, results: ["detect", "--model", str(fx / "tiny"), "--traces",
                                              str(fx / "traces.jsonl"), "--out", str(results),
                                              "--attn", "flex_attention"]),
    Case("detect_tokenizer_missing", "has no tokenizer files",
         argv=lambda fx, tmp, spec, results: ["detect", "--model", str(fx / "no-tokenizer"), "--traces",
                                              str(fx / "traces.jsonl"), "--out", str(results)]),
    Case("detect_trace_too_long", "takes at most 512", setup=_traces_file(json.dumps({"text": "b" * 600}) + "\n"),
         argv=lambda fx, tmp, spec, results: ["detect", "--model", str(fx / "tiny"), "--traces", str(tmp / "bad.jsonl"),
                                              "--out", str(results)]),
    Case("detect_trace_file_binary", "is not UTF-8 text",
         setup=lambda fx, tmp, mp: (tmp / "bad.jsonl").write_bytes(bytes(range(128, 256)) * 8),
         argv=lambda fx, tmp, spec, results: ["detect", "--model", str(fx / "tiny"), "--traces", str(tmp / "bad.jsonl"),
                                              "--out", str(results)]),
    Case("detect_chat_template_missing", "has no chat template",
         argv=lambda fx, tmp, spec, results: ["detect", "--model", str(fx / "tiny"), "--traces",
                                              str(fx / "traces.jsonl"), "--out", str(results), "--chat-template"]),
]
for _c in CASES:  # trace-file cases run `intervene run` on a spec pointing at tmp/bad.jsonl
    if _c.spec is None and _c.argv is None:
        _c.spec = "bad-traces"


def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, fx, tmp_path, monkeypatch):
    if case.skip is not None and case.skip():
        pytest.skip(f"{case.id}: not reproducible on this machine")
    import transformers

    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def recording(cls, *args, **kwargs):
        loads.append(args[:1])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(recording))
    if case.setup is not None:
        case.setup(fx, tmp_path, monkeypatch)
    spec_path = tmp_path / "spec.yaml"
    if case.spec is not None:
        data = _spec_with_traces(fx, tmp_path) if case.spec == "bad-traces" else case.spec(fx)
        spec_path.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
    results = tmp_path / "results"
    existing = case.existing(tmp_path) if case.existing is not None else None
    before = snapshot(existing) if existing is not None else None
    argv = case.argv(fx, tmp_path, spec_path, results) if case.argv else ["run", str(spec_path), "--results",
                                                                           str(results)]
    result = runner.invoke(app, argv)

    # Progress bars of a clean pass may precede the error of a case that needs one; nothing else may.
    lines = [line for line in result.output.splitlines() if line.strip() and "━" not in line]
    assert result.exit_code == 2, f"{case.id}: exit {result.exit_code}\n{result.output}\n{result.exception!r}"
    assert len(lines) == 1 and lines[0].startswith("error: "), f"{case.id}: not one error line:\n{result.output}"
    assert case.needle in lines[0], f"{case.id}: {case.needle!r} not in {lines[0]!r}"
    assert not results.exists(), f"{case.id}: wrote {results}"
    if existing is not None:
        assert snapshot(existing) == before, f"{case.id}: changed {existing}"
    if not case.weights:
        assert not loads, f"{case.id}: weights were loaded before the problem was reported"
    print(f"{case.id}: {lines[0]}")


def test_catalogue_lists_every_case():
    ids = [c.id for c in CASES]
    print("\n".join(["bad-input catalogue:"] + [f"  {i}" for i in ids]))
    assert len(ids) == len(set(ids)) >= 25


def test_bf16_probe_is_honest():
    """The capability probe really runs bf16 kernels; on this CPU it agrees with a direct matmul."""
    from interventions.models.load import _dtype_probe

    try:
        (torch.ones(2, 2, dtype=torch.bfloat16) @ torch.ones(2, 2, dtype=torch.bfloat16)).sum().item()
        works = True
    except RuntimeError:
        works = False
    assert (_dtype_probe(torch.bfloat16, "cpu") is None) == works


def test_force_skips_the_memory_check(fx, tmp_path, monkeypatch):
    from interventions.models import memory

    monkeypatch.setattr(memory, "available_memory", lambda device: (1 << 20, "this machine's RAM"))
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(base_spec(fx)))
    result = runner.invoke(app, ["run", str(spec), "--results", str(tmp_path / "r"), "--force", "-q"])
    assert result.exit_code == 0, result.output
    assert len(list((tmp_path / "r" / "catalogue").iterdir())) == 1


def test_non_finite_after_scaling_is_a_warning_not_a_crash(fx, tmp_path):
    """A bf16 model scaled by 1e38 overflows: the run finishes, says where, and marks those rows."""
    import pandas as pd

    from interventions.models.load import _dtype_probe

    dtype = "bfloat16" if _dtype_probe(torch.bfloat16, "cpu") is None else "float32"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(with_intervention(fx, factors=[2, 1e38]) | {"dtype": dtype}))
    result = runner.invoke(app, ["run", str(spec), "--results", str(tmp_path / "r"), "-q"])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.output.splitlines() if line.startswith("warning:")]
    assert len(warnings) == len(TEXTS), result.output  # one line per trace, naming condition and place
    assert all("scale.mlp_output.L1.x1e+38" in w and "non-finite" in w and "position 3" in w for w in warnings)
    run = next((tmp_path / "r" / "catalogue").iterdir())
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "tables"  # finished; its spec asks for no statistics (report: false)
    assert [(e["trace"], e["condition"], e["position"]) for e in manifest["non_finite"]] == [
        (i, "scale.mlp_output.L1.x1e+38", 3) for i in range(len(TEXTS))]
    effects = pd.read_parquet(run / "effects.parquet")
    flagged = effects.groupby("condition").non_finite.all()
    assert flagged["scale.mlp_output.L1.x1e+38"] and not effects[effects.factor == 2].non_finite.any()
    summary = pd.read_csv(run / "summary.csv").set_index("condition")
    assert summary.loc["scale.mlp_output.L1.x2", "non_finite"] == 0
    assert summary.loc["scale.mlp_output.L1.x1e+38", "non_finite"] == len(TEXTS)


if __name__ == "__main__":
    for c in CASES:
        print(c.id)
