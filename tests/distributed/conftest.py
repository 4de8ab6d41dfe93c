"""Each world size is spawned once per session (gloo, CPU); the tests read its results."""

import pytest

from . import spawn, workers


@pytest.fixture(scope="session")
def runs(tmp_path_factory):
    """``{world: [rank 0's results, rank 1's, ...]}`` of :func:`workers.scenarios`, spawned lazily."""
    cache = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            path = str(tmp_path_factory.mktemp(f"world{world}") / "checkpoint")
            cache[world] = spawn.run(workers.scenarios, world, path)
        return cache[world]

    return get
