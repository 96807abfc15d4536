"""Data-parallel runs under ``torchrun``: traces split by rank, results merged by rank 0.

``torchrun --nproc_per_node N -m interventions.cli.main run SPEC`` starts N processes with
``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set; each loads its own copy of the model (on
``cuda:LOCAL_RANK`` when the spec says ``device: cuda``) and runs trace ``i`` iff
``i % WORLD_SIZE == RANK``. Only small Python objects cross processes (the run folder name,
the clean sinks, error lines), so the group always uses the gloo backend, GPU or not.
Without those variables (a plain ``intervene run``) every method here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from interventions.errors import UserError


@dataclass
class Ranks:
    """This process's place in a data-parallel run (rank 0 of 1 when not under torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    _group: bool = False

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def owns(self, trace_index: int) -> bool:
        """Whether this rank runs trace ``trace_index`` (deterministic: index modulo world size)."""
        return trace_index % self.world_size == self.rank

    def device(self, device: str) -> str:
        """The device this rank uses: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per process)."""
        if not self.active:
            return device
        if device == "auto":
            raise UserError("auto spreads one model over every GPU, which the other ranks also use; under "
                            "torchrun use device: cuda (one GPU per process) or cpu", field="device")
        return f"cuda:{self.local_rank}" if device == "cuda" else device

    def start(self) -> Ranks:
        """Join the process group (gloo) once; no-op for a single process."""
        if self.active and not self._group:
            import torch.distributed as dist

            if not dist.is_initialized():
                dist.init_process_group("gloo", rank=self.rank, world_size=self.world_size,
                                        timeout=timedelta(hours=48))  # ranks wait at the end for the slowest
            self._group = True
        return self

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            self.start()
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        self.start()
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        self.start()
        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def agree(self, fn):
        """Run ``fn`` on every rank; when it raises a UserError on any rank, raise one on every rank.

        Without this a rank that fails a check would leave the others waiting at the next collective.
        """
        if not self.active:
            return fn()
        error, result = None, None
        try:
            result = fn()
        except UserError as exc:
            error = exc
        messages = [m for m in self.gather(None if error is None else str(error)) if m is not None]
        if error is not None:
            raise error
        if messages:
            raise UserError(messages[0])
        return result

    def close(self) -> None:
        if self._group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self._group = False


def ranks_from_env(environ=None) -> Ranks:
    """Read ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (set by torchrun); a single process without them."""
    env = os.environ if environ is None else environ
    try:
        world = int(env.get("WORLD_SIZE", "1"))
        rank = int(env.get("RANK", "0"))
        local = int(env.get("LOCAL_RANK", str(rank)))
    except ValueError:
        raise UserError(f"RANK/WORLD_SIZE/LOCAL_RANK must be integers (got {env.get('RANK')!r}, "
                        f"{env.get('WORLD_SIZE')!r}, {env.get('LOCAL_RANK')!r}); launch with torchrun",
                        field="distributed") from None
    if world < 1 or not 0 <= rank < world:
        raise UserError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world}); launch with torchrun",
                        field="distributed")
    return Ranks(rank=rank, world_size=world, local_rank=local)


def _load_manifest(path: Path) -> dict:
    from interventions.store import Manifest

    return Manifest.load(path)


def merge_rank_manifests(manifest, out: Path, world_size: int, done: set[int]) -> None:
    """Rank 0: fold every rank's manifest (traces done, timings, forwards, warnings) into manifest.json."""
    completed, per_trace, per_condition = set(done), dict(manifest.data["timings"].get("per_trace_s", {})), {}
    forwards: dict[str, float] = {}
    non_finite: list[dict] = []
    for rank in range(world_size):
        data = _load_manifest(out / f"manifest.rank-{rank}.json")
        completed |= set(data.get("traces_completed", []))
        per_trace.update(data["timings"].get("per_trace_s", {}))
        for k, v in data["timings"].get("per_condition_s", {}).items():
            per_condition[k] = round(per_condition.get(k, 0.0) + v, 4)
        for k, v in data.get("forwards", {}).items():
            forwards[k] = forwards.get(k, 0) + v
        non_finite += data.get("non_finite", [])
    manifest.data["traces_completed"] = sorted(completed)
    manifest.data["timings"].update(per_trace_s=per_trace, per_condition_s=per_condition)
    manifest.data["forwards"] = forwards
    manifest.data["non_finite"] = sorted(non_finite, key=lambda e: (e["trace"], e["condition"], e["is_control"]))
    manifest.save()
