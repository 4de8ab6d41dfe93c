"""Run a function on W gloo ranks in fresh processes, with timeouts, and collect the results."""

from __future__ import annotations

import datetime
import io
import multiprocessing as mp
import os
import tempfile
import traceback

import torch

TIMEOUT_S = 60  # the process group's timeout: a hang becomes an error
JOIN_S = 150  # a worker that has not finished by then is killed


def _worker(fn, rank: int, world: int, init_file: str, queue, args) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        if world > 0:
            dist.init_process_group(
                "gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                timeout=datetime.timedelta(seconds=TIMEOUT_S),
            )  # fmt: skip
        result = io.BytesIO()
        torch.save(fn(rank, world, *args), result)  # bytes: tensors must outlive this process
        queue.put((rank, "ok", result.getvalue()))
    except BaseException as e:  # noqa: BLE001 - reported to the parent
        queue.put((rank, "error", f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))
    finally:
        if world > 0 and dist.is_initialized():
            dist.destroy_process_group()


def run(fn, world: int, *args) -> list:
    """``fn(rank, world, *args)`` on ``world`` processes; returns the results in rank order and
    raises if any rank failed (with its traceback) or hung."""
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    fd, init_file = tempfile.mkstemp(prefix="steepest-pg-")
    os.close(fd)
    os.unlink(init_file)
    procs = [ctx.Process(target=_worker, args=(fn, r, world, init_file, queue, args), daemon=True) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, tuple] = {}
    try:
        for _ in range(world):
            rank, status, value = queue.get(timeout=JOIN_S)
            results[rank] = (status, value)
    finally:
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
        if os.path.exists(init_file):
            os.unlink(init_file)
    errors = [f"rank {r}: {v}" for r, (s, v) in sorted(results.items()) if s == "error"]
    if errors:
        raise AssertionError("worker failed:\n" + "\n".join(errors))
    return [torch.load(io.BytesIO(results[r][1]), weights_only=False) for r in range(world)]
