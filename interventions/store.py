"""Run folders: atomic per-trace writes, the manifest, and the rules for reusing a folder.

Every file is written to a temporary name in the same folder and renamed into place, so a
crash leaves either the old file or the new one, never half of one. Per-trace results go to
part files (``profiles.parquet/part-00003.parquet``): a folder of Parquet parts reads as one
table (``pandas.read_parquet("profiles.parquet")``) and a crash loses at most the trace in flight.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import UserError
from .jsonable import to_jsonable

MANIFEST_VERSION = 1


def _file_mode() -> int:
    """The mode ``open()`` would give a new file under the process umask (0644 under umask 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: Path):
    """Yield a temporary path beside ``path``; rename it onto ``path`` if the block succeeds.

    ``mkstemp`` creates the temporary file 0600; it gets the umask's mode before the rename, so
    results are as readable as any file the user writes (shared result folders stay shared).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, _file_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=False) + "\n")


def write_parquet_atomic(path: Path, frame: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_arrays_atomic(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """safetensors, not pickle: safe to load from anyone's results folder."""
    from safetensors.numpy import save_file

    with atomic_path(path) as tmp:
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp))


def read_arrays(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


def part_name(trace: int, suffix: str = ".parquet") -> str:
    return f"part-{trace:05d}{suffix}"


def read_parts(folder: Path) -> pd.DataFrame:
    """The Parquet parts of ``folder`` (``part-*.parquet``) as one table; empty parts are skipped."""
    parts = sorted(folder.glob("part-*.parquet"))
    frames = [pd.read_parquet(p) for p in parts]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def _writable(folder: Path) -> bool:
    """Whether a file can really be created in ``folder`` (``os.access`` says yes to root on read-only mounts)."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return True
    except OSError:
        return False


# What each command writes at the top of its folder (``--overwrite`` removes a folder only when
# everything in it is on this list for the kind its manifest names: it never deletes a user's file).
TOOL_FILES: dict[str, frozenset[str]] = {
    "run": frozenset({"manifest.json", "spec.yaml", "clean_sinks.jsonl", "sink_layers.parquet", "sink_window.parquet",
                      "clean_profile.parquet", "effects.parquet", "downstream.parquet", "parts", "summary.csv",
                      "stats.json", "report.md", "figures"}),
    "detect": frozenset({"manifest.json", "sinks.jsonl", "levels.csv", "tokens.csv", "traces.csv", "sensitivity.csv",
                         "profiles.parquet", "sink_scores", "parts", "report.md", "figures"}),
    "heads": frozenset({"manifest.json", "heads.csv", "heads_per_trace.parquet", "summary.json", "figures"}),
}


def _written_by_tool(kind: str, name: str) -> bool:
    if name.startswith(".") and name.endswith(".tmp"):  # an atomic write cut short
        return True
    if kind == "run" and name.startswith("manifest.rank-") and name.endswith(".json"):  # torchrun shards
        return True
    return name in TOOL_FILES.get(kind, frozenset())


def foreign_entries(path: Path) -> list[str]:
    """The names in ``path`` that this tool did not write (all of them when no manifest names its kind)."""
    kind = folder_kind(path)
    return sorted(p.name for p in path.iterdir() if kind is None or not _written_by_tool(kind, p.name))


def _show_names(names: list[str], most: int = 5) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


def check_output_dir(path: Path, *, overwrite: bool = False, resume: bool = False, option: str = "--out") -> None:
    """Refuse, before any work, to write where we should not (one line with the fix).

    ``overwrite`` replaces only a folder this tool wrote (a run or detect folder with its
    manifest); any other file in it is named and the folder is left alone.
    """
    if path.exists() and not path.is_dir():
        raise UserError(f"{path} exists and is a file; choose another {option}", field="out")
    if path.exists() and any(path.iterdir()) and not (overwrite or resume):
        raise UserError(f"{path} already holds results; pass --overwrite to replace them or --resume to continue",
                        field="out")
    if overwrite and not resume and path.is_dir() and any(path.iterdir()):
        foreign = foreign_entries(path)
        if foreign:
            what = ("is not a folder this tool wrote (no manifest.json)" if folder_kind(path) is None
                    else "holds files this tool did not write")
            raise UserError(f"{path} {what}: {_show_names(foreign)} — --overwrite replaces only a run, detect or "
                            f"heads folder and never deletes other files; move them or choose another {option}",
                            field="out")
    probe = path if path.exists() else next((p for p in path.parents if p.exists()), Path("."))
    if not probe.is_dir():
        raise UserError(f"cannot create {path}: {probe} is a file, not a folder; choose another {option}", field="out")
    if not _writable(probe):
        raise UserError(f"cannot write to {probe} (read-only or no permission); choose a writable {option}",
                        field="out")


def prepare_output_dir(path: Path, *, overwrite: bool = False, resume: bool = False, option: str = "--out") -> Path:
    check_output_dir(path, overwrite=overwrite, resume=resume, option=option)
    if overwrite and path.exists() and not resume:
        shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    if resume:  # temporary files of writes cut short by a crash: never renamed into place, so never read
        for tmp in path.rglob(".*.tmp"):
            tmp.unlink(missing_ok=True)
    return path


def folder_kind(path: Path) -> str | None:
    """What wrote ``path``: ``run``, ``detect``, ``experiment``... (its manifest's kind); None if no manifest."""
    manifest = Path(path) / "manifest.json"
    if not manifest.is_file():
        return None
    try:
        return json.loads(manifest.read_text(encoding="utf-8")).get("kind") or "run"
    except (OSError, ValueError):
        return None


def check_run_folder(path: Path) -> None:
    """Refuse, in one line, a folder that `intervene run` did not write."""
    kind = folder_kind(path)
    if kind == "run":
        return
    if kind is None:
        raise UserError(f"{path} is not a run folder (no manifest.json); give a folder written by `intervene run` "
                        "(results/<name>/<run id>) or results/<name>", field="run_dir")
    hint = " (`intervene report` renders its detection report)" if kind == "detect" else ""
    raise UserError(f"{path} was written by `intervene {kind}`, not `intervene run`{hint}; give a run folder",
                    field="run_dir")


def package_versions() -> dict[str, str | None]:
    """Versions of the packages that decide a result (read from metadata: no slow imports)."""
    out: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("interventions", "torch", "transformers", "pyvene", "numpy", "scipy", "statsmodels",
                 "pandas", "pyarrow", "safetensors", "accelerate", "gguf"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def tool_revision() -> dict:
    """Commit of this tool's checkout and whether it had uncommitted changes."""
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                                timeout=5).stdout.strip() or None
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                                    capture_output=True, text=True, timeout=5).stdout.strip())
    except (OSError, subprocess.SubprocessError):
        commit, dirty = None, None
    return {"commit": commit, "dirty": dirty}


class Manifest:
    """The provenance record of one run, rewritten atomically as the run progresses."""

    def __init__(self, path: Path, *, command: list[str] | str, kind: str, **fields):
        self.path = path
        self.started = time.perf_counter()
        self.data: dict = {
            "manifest_version": MANIFEST_VERSION,
            "kind": kind,
            "run_id": fields.pop("run_id", None) or new_run_id(),
            "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "command": command if isinstance(command, str) else " ".join(command),
            "status": "running",
            "versions": package_versions(),
            "tool": tool_revision(),
            "platform": {"system": platform.platform(), "executable": sys.executable},
            "traces_completed": [],
            "timings": {},
            **fields,
        }

    @classmethod
    def load(cls, path: Path) -> dict:
        return json.loads(path.read_text(encoding="utf-8"))

    def update(self, **fields) -> None:
        self.data.update(fields)
        self.save()

    def trace_done(self, trace: int, seconds: float) -> None:
        done = set(self.data["traces_completed"]) | {trace}
        self.data["traces_completed"] = sorted(done)
        self.data["timings"].setdefault("per_trace_s", {})[str(trace)] = round(seconds, 4)
        self.save()

    def finish(self, status: str = "complete", **fields) -> None:
        self.data["timings"]["total_s"] = round(time.perf_counter() - self.started, 3)
        self.data["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self.update(status=status, **fields)

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-") + uuid.uuid4().hex[:6]
