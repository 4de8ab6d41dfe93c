"""DCP checkpoints resume under another world size and setting, identically to an uninterrupted
run: 3 steps, save, load under another world size, 3 more steps; compared with 6 straight steps
of the same optimizer (``build_optimizer``: the matrix optimizer plus AdamW).

* 1 → 2: saved by one process (a process group of size 1), resumed by 2 ranks under DDP
  (replicated) and FSDP2 (row-sharded DTensor state);
* 2 → 1: saved by 2 ranks under DDP and FSDP2, resumed by this process without any process group.

Tolerance 1e-6 absolute on the weights (these runs are float32 and come out bit-identical here).
"""

import pytest
import torch

from . import spawn, workers

pytestmark = pytest.mark.filterwarnings("ignore:torch.distributed is disabled")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    directory = str(tmp_path_factory.mktemp("dcp"))
    reference = spawn.run(workers.dcp_one_process, 1, directory)[0]
    resumed = spawn.run(workers.dcp_two_processes, 2, directory)
    return directory, reference, resumed


def worst(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((x - y).abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", workers.CHECKPOINTED)
def test_resume_one_to_two(checkpoints, name, setting):
    _, reference, resumed = checkpoints
    for rank in range(2):
        assert worst(resumed[rank][name, setting], reference[name]) <= 1e-6, f"rank {rank}"


@pytest.mark.parametrize("setting", ["ddp", "fsdp"])
@pytest.mark.parametrize("name", workers.CHECKPOINTED)
def test_resume_two_to_one_without_process_group(checkpoints, name, setting):
    directory, reference, _ = checkpoints
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in the workers, so that the matmuls round the same way
    try:
        weights = workers.train_full(name, "local", 3, 3, load_from=f"{directory}/{setting}-{name}")
    finally:
        torch.set_num_threads(threads)
    assert worst(weights, reference[name]) <= 1e-6
