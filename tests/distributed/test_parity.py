"""DDP and FSDP2 steps equal the single-process steps, for every matrix optimizer.

Every rank builds the same gradients (the same batch, or the reference run's gradients written
into the FSDP2 row shards) and runs 4 steps; the single-process reference is the same optimizer
on the local executor, in the same process. Tolerance, on the worst ``max|ΔW| / max|W|`` over
the matrices: 1e-6 (float32 rounding; no reduction touches these numbers, and on this machine
they come out bit-identical), except Newton-Muon, whose input second moments are summed over the
ranks (1e-4: that sum's order differs from one process's), and Neon on row shards (the Krylov
path sums its products over ranks and chooses other QR bases: 1e-5).
"""

import pytest

from . import workers

TOL = {"newton-muon": 1e-4}
WORLDS = [2, 3]


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", workers.MATRIX_NAMES)
def test_ddp_matches_single_process(runs, world, name):
    for rank, out in enumerate(runs(world)):
        result = out["ddp"][name]
        assert result["setting"] == "ddp"
        assert result["diff"] <= TOL.get(name, 1e-6), f"rank {rank}: {result['diff']}"
        assert result["state_equal"], f"rank {rank}'s optimizer state differs from rank 0's"


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", workers.MATRIX_NAMES)
def test_fsdp_matches_single_process(runs, world, name):
    for rank, out in enumerate(runs(world)):
        result = out["fsdp"][name]
        assert result["momentum_is_dtensor"]
        assert result["diff"] <= TOL.get(name, 1e-6), f"rank {rank}: {result['diff']}"


FACTORED = workers.FACTORED_NAMES


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("setting", ["ddp", "fsdp", "fsdp_krylov"])
def test_directions_travel_as_factors_where_announced(runs, world, setting):
    """A direction announced as factors (``direction_factors``: Neon nuclear's ``σ₁u₁, v₁``, Dion's
    ``P, Q'``) reaches the step as factors through every path, the all-gathers included; where
    directions travel, every other one as a tensor (in place, on row shards, nothing travels and
    F*'s factors of this rank's rows are added as they are). The parity tests above check the values."""
    for out in runs(world):
        for name, result in out[setting].items():
            forms = result["forms"]
            consistent = (lambda a, r: a <= r) if setting == "fsdp_krylov" else (lambda a, r: a == r)
            assert all(consistent(announced, returned) for announced, returned in forms), f"{name}: (announced, returned) {forms}"
            if name in FACTORED:
                assert forms == [(True, True)], f"{name}: {forms}"
    assert set(FACTORED) >= {"neon-nuclear", "dion"}


@pytest.mark.parametrize("world", WORLDS)
@pytest.mark.parametrize("name", workers.NEON_NAMES)
def test_fsdp_neon_krylov_on_row_shards_matches_single_process(runs, world, name):
    for rank, out in enumerate(runs(world)):
        result = out["fsdp_krylov"][name]
        assert result["diff"] <= 1e-5, f"rank {rank}: {result['diff']}"
        assert result["computed"] == [], "the Krylov path must not move whole matrices"


def test_ddp_training_like_the_harness(runs):
    """build_optimizer before DDP wrapping, each rank its own batch: equal to one process on the
    mean gradient, and every rank's state identical (rank 0's state_dict() is a full checkpoint)."""
    for out in runs(2):
        result = out["ddp_training"]
        assert result["setting"] == "ddp"
        assert result["diff"] <= 1e-6
        assert result["state_equal"]


def test_rank0_torch_save_checkpoint_resumes_exactly(runs):
    """The harness saves ``opt.state_dict()`` on rank 0 only (the state is replicated) and every
    rank loads it: the resumed run equals the uninterrupted one."""
    for rank, out in enumerate(runs(2)):
        for name, diff in out["rank0_checkpoint"].items():
            assert diff <= 1e-6, f"rank {rank}, {name}: {diff}"


@pytest.mark.parametrize("world", WORLDS)
def test_every_layer_normed_under_ddp_and_fsdp2(runs, world):
    """The modular optimizers hold every parameter (1-D biases as ``(n, 1)`` columns, FSDP2 shards
    their entries); ``step="dual"``'s global inner product sums the row shards over the ranks, in
    another order than one process: float32 rounding of a sum of ``N`` products, ``N·2⁻²⁴``
    relative on the step size, with ``N`` = 288 entries of the largest tensor (1e-4 covers it)."""
    for rank, out in enumerate(runs(world)):
        results = out["every_layer_normed"]
        assert {key.split("/")[0] for key in results} >= {"modular", "scion"}
        for key, result in results.items():
            assert result["one_optimizer"], f"{key}: not one optimizer"
            assert result["settings"] == [key.split("/")[2]], f"{key}: {result['settings']}"
            tol = 1e-4 if key.endswith("dual/fsdp") else 1e-6
            assert result["diff"] <= tol, f"rank {rank}, {key}: {result['diff']}"


@pytest.mark.parametrize("world", WORLDS)
def test_factors_on_bf16_weights_under_ddp_and_fsdp2(runs, world):
    """bf16 weights: the float32 factors travel and each rank adds their product rounded once to
    bf16, as one process does. Under DDP the same kernels see the same tensors: equal to float32
    rounding (1e-6). Under FSDP2 each rank updates its row shard, and PyTorch's bf16
    ``_foreach_add_`` rounds some entries of a shard differently from the same entries of the whole
    tensor (a measured property of its CPU kernels, not of the optimizer): each step may move a
    weight by one bf16 rounding, at most ``2⁻⁷·max|W|``, so ``STEPS·2⁻⁷`` after ``STEPS`` steps."""
    for rank, out in enumerate(runs(world)):
        results = out["bf16_factors"]
        assert {k.split("/")[0] for k in results} >= {"neon-nuclear", "dion"}
        for key, diff in results.items():
            tol = 1e-6 if key.endswith("/ddp") else workers.STEPS * 2**-7
            assert diff <= tol, f"rank {rank}, {key}: {diff}"
