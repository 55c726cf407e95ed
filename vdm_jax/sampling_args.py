"""The sampler registry and argument checks, importable as `vdm_jax.sampling_args`: they live in
`vdm_jax.sampling.args` (see its docstring); these are the same objects."""
from vdm_jax.sampling.args import (ODE, SAMPLERS, ChainArgs, Sampler, check_chain_args, is_chain,
                                   make_solver, resolve_eta, resolve_order, resolve_spacing,
                                   resolve_tolerances, resolve_trajectory_steps)
from vdm_jax.sampling.onestep import ReverseStep, ancestral_step, chain_step, ddim_step

__all__ = ["ODE", "SAMPLERS", "ChainArgs", "ReverseStep", "Sampler", "ancestral_step",
           "chain_step", "check_chain_args", "ddim_step", "is_chain", "make_solver",
           "resolve_eta", "resolve_order", "resolve_spacing", "resolve_tolerances",
           "resolve_trajectory_steps"]
