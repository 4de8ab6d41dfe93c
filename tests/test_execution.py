"""The batch container of the step (steepest.execution.Bucket): stacking without copies."""

import torch

from steepest.execution import Bucket


def _bucket(momenta: list[torch.Tensor]) -> Bucket:
    n = len(momenta)
    return Bucket(tuple(momenta[0].shape), [torch.empty(0)] * n, [], momenta, [{} for _ in range(n)], [f"w{i}" for i in range(n)])


def test_back_to_back_momenta_stack_as_a_view():
    """Views that lie back to back in one buffer (the CPU step's Nesterov workspace) stack without
    a copy; the stack equals the copied one."""
    flat = torch.randn(3 * 6 * 4)
    views = [flat[i * 24 : (i + 1) * 24].view(6, 4) for i in range(3)]
    M = _bucket(views).stack()
    assert M.data_ptr() == flat.data_ptr() and M.shape == (3, 6, 4)
    assert torch.equal(M, torch.stack(views))


def test_momenta_apart_or_out_of_order_are_copied():
    flat = torch.randn(4 * 24)
    cases = {
        "separate tensors": [torch.randn(6, 4) for _ in range(3)],
        "a gap": [flat[i * 32 : i * 32 + 24].view(6, 4) for i in range(3)],
        "reversed": [flat[(2 - i) * 24 : (3 - i) * 24].view(6, 4) for i in range(3)],
        "transposed": [flat[i * 24 : (i + 1) * 24].view(4, 6).mT for i in range(3)],
    }
    for what, views in cases.items():
        M = _bucket(views).stack()
        assert M.data_ptr() not in {v.data_ptr() for v in views}, what
        assert torch.equal(M, torch.stack([v.reshape(6, 4) for v in views])), what
    # a cast is a copy too
    views = [flat[i * 24 : (i + 1) * 24].view(6, 4) for i in range(3)]
    assert _bucket(views).stack(dtype=torch.float64).dtype == torch.float64
