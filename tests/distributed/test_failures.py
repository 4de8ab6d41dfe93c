"""What must not hang: a gradient missing on some rank, and ranks that built the optimizer
differently. The process group has a 60 s timeout (``spawn.TIMEOUT_S``) as a backstop, but these
cases must end with a clear error (or a consistent step) well before it."""

import pytest


@pytest.mark.parametrize("world", [2, 3])
def test_none_gradient_on_one_rank_does_not_deadlock(runs, world):
    for rank, out in enumerate(runs(world)):
        result = out["none_gradient"]
        assert result["identical"], f"rank {rank}'s weights differ from rank 0's"
        assert not result["head_state"], "a parameter with no gradient on any rank must not step"


def test_mismatched_options_raise_on_every_rank(runs):
    for rank, message in enumerate(out["mismatched_options"] for out in runs(2)):
        assert "ns_steps" in message and "rank 1" in message, f"rank {rank}: {message}"


def test_mismatched_parameters_raise_on_every_rank(runs):
    for rank, message in enumerate(out["mismatched_model"] for out in runs(2)):
        assert "12 entries against 11" in message and "head.weight" in message, f"rank {rank}: {message}"
