"""Update directions as pure functions of tensors: ``G → D``, the optimizer stepping ``W ← W − lr·D``.

Each is steepest descent ``argmin_Δ ⟨G, Δ⟩ + λ/2·‖Δ‖²`` under one norm per weight matrix; the
docstrings state which minimisation each solves and with which scale.

=========================  ==========================================  =================
function                   D                                           norm
=========================  ==========================================  =================
``msgn``                   ``U Vᵀ``                                    spectral (map)
``spectral_direction``     ``√(fan_out/fan_in)·U Vᵀ`` (Muon)           RMS→RMS
``nuclear_direction``      ``σ₁ u₁ v₁ᵀ`` (Neon)                        nuclear
``fstar_direction``        ``U [Σ − τ]₊ Vᵀ`` (F*-Neon)                 (‖·‖_*² + ‖·‖_F²)/2
``shampoo_direction``      ``L^{-1/4} G R^{-1/4}``                     ‖L^{1/8}·R^{1/8}‖_F
``newton_muon_direction``  ``msgn(G (ZZᵀ + δI)⁻¹)``                    (Newton-Muon)
``sign_direction``         ``sign(G)``                                 ℓ1→ℓ∞
``top_singular``           top-k ``(U, S, V)``, warm-startable         (used by Neon)
``dion_update``            ``P Qᵀ``, one warm power iteration (Dion)   rank-r spectral
``row_normalized``         ``msgn(M)`` rows ÷ EMA RMS (NorMuon)        (NorMuon)
=========================  ==========================================  =================
"""

from .dion import DionFactors, dion_update
from .fstar import FSTAR_VARIANTS, fstar_direction, fstar_threshold, mean_of_norms_threshold, soft_threshold_update
from .lowrank import Triplets, top_singular
from .msgn import MSGN_METHODS, msgn
from .normuon import row_normalized
from .newton_muon import newton_muon_direction, right_precondition
from .nuclear import SIGMA_MODES, nuclear_direction
from .shampoo import inverse_root, shampoo_direction
from .sign import sign_direction
from .spectral import SPECTRAL_SCALES, spectral_direction, spectral_scale

__all__ = [
    "msgn",
    "spectral_direction",
    "spectral_scale",
    "nuclear_direction",
    "fstar_direction",
    "fstar_threshold",
    "mean_of_norms_threshold",
    "soft_threshold_update",
    "shampoo_direction",
    "inverse_root",
    "newton_muon_direction",
    "right_precondition",
    "sign_direction",
    "top_singular",
    "dion_update",
    "row_normalized",
    "DionFactors",
    "Triplets",
    "MSGN_METHODS",
    "SPECTRAL_SCALES",
    "SIGMA_MODES",
    "FSTAR_VARIANTS",
]
