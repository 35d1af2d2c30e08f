"""Data-parallel training of one train stage over ``runtime.nproc_per_stage`` processes.

With ``nproc_per_stage: N > 1`` the stage command (``python -m cmml run <stage>``, unchanged for
Snakemake and DVC) becomes a launcher: :func:`launch` starts N copies of the same command under
torch's elastic agent (what ``torchrun --standalone --nproc-per-node N`` does) and waits. Each copy
sees ``LOCAL_RANK``/``WORLD_SIZE`` (:func:`in_torchrun`), joins a process group (gloo on CPU,
nccl on CUDA with device ``cuda:LOCAL_RANK``) and trains:

* every rank draws the same global batch (same seeded generator, same ``replay``) and keeps the
  rows ``rank::world`` of it (:meth:`Dist.shard`), so the effective batch stays ``batch_size``;
* its loss is weighted by its share of the batch and the gradients are summed over ranks
  (:meth:`Dist.reduce_grads`), which is the full-batch gradient for any loss that is a mean over
  samples, uneven last batches included; a parameter no rank touched keeps ``grad = None``, as
  in one process (the optimizer then skips it);
* parameters, optimizer state and hooks (``begin_task``, ``end_task``, ``after_optimizer_step``)
  stay identical on every rank, because every rank applies the same summed gradient.

Only rank 0 writes outputs, the sidecar and the resume state. A rank that fails records its
error in a directory the launcher created; the launcher reports the first one as the stage's
error. Losses that are not a mean over samples (L2P's batch-wise prompt vote, any term averaged
over a data-dependent subset of the batch) see per-rank sub-batches and match one process only
approximately.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

ERRORS_ENV = "CMML_DIST_ERRORS"  # directory where ranks record their errors (set by the launcher)


def in_torchrun() -> bool:
    """Whether this process is a rank started by torch's elastic agent (torchrun)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch(stage_argv: list[str], nproc: int, label: str) -> int:
    """Run ``python <stage_argv>`` as ``nproc`` ranks on this node; the exit code (one message on failure)."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)  # the failure is reported below
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0)
    with tempfile.TemporaryDirectory(prefix="cmml-dist-") as errors:
        os.environ[ERRORS_ENV] = errors
        try:
            elastic_launch(config, sys.executable)(*stage_argv)
            return 0
        except SignalException as exc:
            return 128 + int(exc.sigval)
        except ChildFailedError as exc:
            print(f"cmml run: error: {label} ({nproc} processes): {_first_error(Path(errors), exc)}",
                  file=sys.stderr, flush=True)
            return 2
        finally:
            del os.environ[ERRORS_ENV]


def _first_error(errors: Path, exc: Any) -> str:
    """The earliest error a rank recorded, else the exit status of the first rank that died."""
    records = [json.loads(p.read_text()) for p in sorted(errors.glob("rank*.json"))]
    if records:
        first = min(records, key=lambda r: r["time"])
        return f"rank {first['rank']}: {first['message']}"
    rank, failure = min(exc.failures.items(), key=lambda kv: kv[1].timestamp)
    return f"rank {rank} exited with status {failure.exitcode} without an error message (killed?)"


@dataclass(frozen=True)
class Dist:
    """This process's place in the group and the collectives the training loop needs."""

    rank: int
    world: int
    backend: str

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that writes."""
        return self.rank == 0

    def describe(self) -> dict[str, Any]:
        """What the sidecar records."""
        return {"world_size": self.world, "backend": self.backend}

    def shard(self, batch: Any) -> tuple[Any, float]:
        """This rank's rows ``rank::world`` of a global batch and their share of it."""
        n = len(batch)
        rows = torch.arange(self.rank, n, self.world)
        part = batch.rows(rows)
        return part, len(rows) / n

    def reduce_grads(self, params: list[Tensor]) -> None:
        """Sum the gradients over ranks; a parameter without a gradient on every rank keeps none."""
        dev = params[0].device
        has = torch.tensor([p.grad is not None for p in params], dtype=torch.int32, device=dev)
        torch.distributed.all_reduce(has)
        used = [p for p, h in zip(params, has.tolist()) if h]
        if not used:
            return
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in used])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p in used:
            p.grad = flat[offset:offset + p.numel()].view_as(p).clone()
            offset += p.numel()

    def sum_logs(self, sums: dict[str, float]) -> dict[str, float]:
        """Per-key sum over ranks of their (share-weighted) log sums."""
        gathered: list[dict[str, float] | None] = [None] * self.world
        torch.distributed.all_gather_object(gathered, sums)
        out: dict[str, float] = {}
        for part in gathered:
            for k, v in (part or {}).items():
                out[k] = out.get(k, 0.0) + v
        return out

    def barrier(self) -> None:
        """Wait for every rank."""
        torch.distributed.barrier()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[Dist]:
    """Join the group torchrun set up (nccl on CUDA, gloo on CPU); record an error for the launcher.

    An exception in the body is written to the launcher's error directory and ends this rank
    quietly (exit status 1): the launcher prints the first rank's error once.
    """
    backend = "nccl" if device.type == "cuda" else "gloo"
    torch.distributed.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    dist = Dist(torch.distributed.get_rank(), torch.distributed.get_world_size(), backend)
    try:
        yield dist
    except Exception as exc:  # noqa: BLE001 - every rank error goes to the launcher
        _record(dist.rank, exc)
        raise SystemExit(1) from None
    finally:
        torch.distributed.destroy_process_group()


def _record(rank: int, exc: Exception) -> None:
    """Write this rank's error where the launcher looks (or print it when run without one)."""
    from cmml.errors import CmmlError

    message = str(exc) if isinstance(exc, CmmlError) else "".join(traceback.format_exception(exc)).rstrip()
    errors = os.environ.get(ERRORS_ENV)
    if not errors:
        print(f"cmml run: error: rank {rank}: {message}", file=sys.stderr, flush=True)
        return
    tmp = Path(errors) / f".rank{rank}.tmp"
    tmp.write_text(json.dumps({"rank": rank, "time": time.time(), "message": message}))
    os.replace(tmp, Path(errors) / f"rank{rank}.json")
