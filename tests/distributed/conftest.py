"""Each world size is spawned once per session (gloo, CPU); the tests read its results."""

import pytest

from . import spawn, workers


@pytest.fixture(scope="session")
def runs():
    """``{world: [rank 0's results, rank 1's, ...]}`` of :func:`workers.scenarios`, spawned lazily."""
    cache = {}

    def get(world: int) -> list[dict]:
        if world not in cache:
            cache[world] = spawn.run(workers.scenarios, world)
        return cache[world]

    return get
