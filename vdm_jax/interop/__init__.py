"""Weights and checkpoints written by other VDM code bases.

`official` (a package: `layout`, `weights`, `checkpoints`): the official VDM code (github.com/google-research/vdm): its model variables
(`convert`) and its clu train-state checkpoints (`load_checkpoint`), as a `model.VDM` with
variables that compute the same eps_hat(z_t; gamma_t) and gamma(t).
"""
from vdm_jax.interop import official

__all__ = ["official"]
