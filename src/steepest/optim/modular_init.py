"""``modular_init``: every weight initialised on the unit sphere of its role's norm, times its radius (Scion's ``init()``)."""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..validation import check_choice
from .base import check_hyperparameter
from .modular import ROLE_ATOMS, role_of_kind
from .split import classify_parameters

__all__ = ["modular_init"]

# Scion's MLP setting (hidden and embedding 1, head 2^10): the optimizer's default radii (Scion's
# nanoGPT setting, hidden 50) would start every hidden layer at RMS->RMS norm 50. Inside the
# Frank-Wolfe balls of the default radii, so scion's weights stay in them.
RADIUS, EMBED_RADIUS, HEAD_RADIUS = 1.0, 1.0, 2.0**10


@torch.no_grad()
def modular_init(
    model: nn.Module,
    *,
    radius: float = RADIUS,
    embed_radius: float = EMBED_RADIUS,
    head_radius: float = HEAD_RADIUS,
    head_atom: str = "sign",
    head: Iterable[nn.Parameter | nn.Module | str] | None = None,
    inputs: str = "matrix",
    generator: torch.Generator | None = None,
) -> nn.Module:
    """Re-initialise ``model``'s trainable parameters in place so that each has norm ``ρ`` in its
    role's norm (the roles of :class:`~steepest.optim.modular.Modular`, from the same split; ``head``
    and ``inputs`` as :func:`steepest.build_optimizer`'s), as Scion's ``init()`` does; returns ``model``.
    The default radii are Scion's MLP setting (1, 1, 2¹⁰), not the optimizer's (its nanoGPT
    setting: a hidden layer would start at norm 50).

    * hidden and input matrices (the ``(out, in·kh·kw)`` view): orthogonal ``× √(m/n) × radius``
      (RMS→RMS norm ``radius``);
    * embeddings and embedding-like tensors: Gaussian rows (of the last dimension) scaled to RMS 1,
      ``× embed_radius``;
    * the head (and a tied embedding/head weight): ``head_atom``'s sphere ``× head_radius``:
      ``"sign"`` random ``±1/n``, ``"rownorm"`` Gaussian rows of norm ``1/√n``, ``"spectral"`` as hidden;
    * biases (1-D parameters named ``*bias``): zero (Scion's ``BiasRMS``); other 1-D parameters
      (norm gains, RMS 1 at their usual init of ones) are left as they are.

    The random numbers come from ``generator`` (default: torch's global generator). Call it
    before the model is sharded (DTensor parameters are refused)."""
    for key, value in (("radius", radius), ("embed_radius", embed_radius), ("head_radius", head_radius)):
        check_hyperparameter(key, value)
    check_choice(head_atom, "head_atom", ROLE_ATOMS["head"])
    radii = {"hidden": radius, "input": radius, "embedding": embed_radius, "embedding-like": embed_radius, "head": head_radius}
    for info in classify_parameters(model, head, inputs=inputs).params:
        p, role = info.param, role_of_kind(info)
        if hasattr(p, "placements"):
            raise ValueError(f"modular_init: parameter {info.name!r} is a DTensor; initialise the model before sharding it")
        if role == "vector":
            if info.name.rsplit(".", 1)[-1] == "bias":
                p.zero_()
            continue
        atom = head_atom if role == "head" else ROLE_ATOMS[role][0]
        blocks = getattr(info, "blocks", 1)
        for block in p.chunk(blocks, dim=0) if blocks > 1 else (p,):
            _init_block(block, atom, info.transposed, radii[role], generator)
    return model


def _init_block(p: Tensor, atom: str, transposed: bool, rho: float, generator: torch.Generator | None) -> None:
    """One matrix (or embedding table) on the sphere of radius ``rho`` of ``atom``'s norm."""
    if atom == "embed":
        rows = torch.randn(p.shape, generator=generator, dtype=torch.float64, device=p.device).reshape(-1, p.shape[-1])
        rows *= math.sqrt(p.shape[-1]) / rows.norm(dim=-1, keepdim=True)
        p.copy_((rows * rho).reshape(p.shape))
        return
    m, n = (math.prod(p.shape[1:]), p.shape[0]) if transposed else (p.shape[0], math.prod(p.shape[1:]))
    if atom == "spectral":
        W = torch.empty(m, n, dtype=torch.float64, device=p.device)
        nn.init.orthogonal_(W, generator=generator)
        W *= math.sqrt(m / n)
    elif atom == "sign":
        W = torch.randint(0, 2, (m, n), generator=generator, device=p.device).to(torch.float64) * 2 - 1
        W /= n
    else:  # rownorm
        W = torch.randn(m, n, generator=generator, dtype=torch.float64, device=p.device)
        W /= W.norm(dim=-1, keepdim=True) * math.sqrt(n)
    W *= rho
    p.copy_((W.mT if transposed else W).reshape(p.shape))
