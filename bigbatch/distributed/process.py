"""The process group: who am I (rank), how many are we (world size), and the few collectives the
trainer needs. Started by torchrun (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR... in the
environment); one process without those variables is world size 1 and needs no process group.

Backend: nccl on CUDA, gloo on CPU. On CPU each of the node's processes gets an equal share of the
cores as its thread budget, so N processes do not oversubscribe the machine.
"""

from __future__ import annotations

import datetime
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist



@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum of ``values`` over the ranks (float64, so target counts stay exact)."""
        t = torch.tensor(values, dtype=torch.float64, device=device)
        if self.enabled:
            dist.all_reduce(t)
        return t.tolist()

    def min(self, value: int, device: torch.device) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=device)
        if self.enabled:
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
        return int(t.item())

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast(self, obj):
        """Rank 0's ``obj`` on every rank."""
        if not self.enabled:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj) -> list | None:
        """Every rank's ``obj`` as a list on rank 0 (None elsewhere)."""
        if not self.enabled:
            return [obj]
        out = [None] * self.world_size if self.is_main else None
        dist.gather_object(obj, out, dst=0)
        return out


ONE_PROCESS = Dist()


def from_env() -> Dist:
    env = os.environ
    return Dist(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)),
                int(env.get("LOCAL_WORLD_SIZE", 1)))


def cpu_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def init(device_name: str, timeout_s: float, group: bool = True) -> tuple[Dist, torch.device, bool]:
    """Join the process group torchrun describes -> (Dist, this rank's device, whether we started it).

    A collective that waits longer than ``timeout_s`` (a rank died or hangs) fails instead of hanging.
    One process started without torchrun gets a group of one when ``group`` (so ddp / fsdp run the
    same code path there).
    """
    from bigbatch.train.setup import resolve_device

    d, device = from_env(), resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", d.local_rank if d.enabled else (device.index or 0))
        torch.cuda.set_device(device)
    if (not d.enabled and not group) or dist.is_initialized():
        return d, device, False
    if d.enabled and device.type == "cpu":
        torch.set_num_threads(max(1, cpu_cores() // d.local_world_size))
    backend = "nccl" if device.type == "cuda" else "gloo"
    timeout = datetime.timedelta(seconds=timeout_s)
    if d.enabled:
        dist.init_process_group(backend, timeout=timeout, device_id=device if device.type == "cuda" else None)
    else:
        dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    return d, device, True


def shutdown(started: bool) -> None:
    if started and dist.is_initialized():
        dist.destroy_process_group()


def wait_for_file(path: Path, what: str, poll_s: float = 1.0, report_every_s: float = 60.0) -> None:
    """Block until ``path`` exists: waiting on disk, not on a collective, so no timeout can fire
    however long the work takes (if the rank doing it dies, torchrun stops this one)."""
    start = last = time.time()
    while not path.exists():
        time.sleep(poll_s)
        if time.time() - last >= report_every_s:
            last = time.time()
            print(f"waiting for {what} ({last - start:.0f} s)", file=sys.stderr)
