"""Sampling: solvers of the reverse chain over one protocol, the probability-flow ODE, wrappers.

Notation as in `vdm_jax.diffusion`; lambda = log(alpha / sigma) = -gamma / 2.

The chain. T steps over times 0 = t_0 < t_1 < ... < t_T = 1 (`spacing`): step i = T, ..., 1
evaluates the network once, eps_hat = eps_fn(z, gamma(t_i)), at the solver's current point
and moves it to t_(i-1); so T is the number of network evaluations. z_1 ~ N(0, I) (or given,
`z_1=`); z_0 is decoded by the data model's decoder p(x | z_0) at gamma(0)
(`likelihood.Discrete`: integers, `likelihood.Continuous`: floats). The whole chain is ONE
`lax.scan` (`run_chain`), so the program size does not grow with T.

The protocol (`protocol.Solver`), in the spirit of optax's (init, update):

    z, state   = solver.init(z_1, gamma_1)
    z_s, state = solver.update(key, z_t, eps_hat, state, step)     # step: `protocol.Step`
                 # step.i (T..1), step.T, step.t, step.s, step.gamma_t, step.gamma_s

z is the point the network is evaluated at next; state is what the solver carries (earlier
data predictions and their gammas for a multistep solver, () for a one-step one); key is
fold_in(key_steps, i). `Solver.one_step` says whether update uses nothing but the current
latent. The solvers (`SAMPLERS`):

  * "ancestral": z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat) (eta = 1).
  * "ddim": z_s = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps,
    eta in [0, 1] (default 0: deterministic, the first-order solver of the ODE).
    Both are one-step (`onestep`: a `ReverseStep` made a Solver by `chain_step`).
  * "dpmpp_2m", "dpmpp_3m": DPM-Solver++ multistep of order 2 and 3 in data-prediction form;
    "unipc": UniPC predictor-corrector, order 2 or 3 (`order=`, default 3) (`multistep`). They
    warm up at lower order and, for T < `multistep.LOWER_ORDER_FINAL_BELOW`, also lower it on
    the last steps. Deterministic.

Spacings (`spacing.SPACINGS`): "uniform_t" (t_i = i / T; the default of ancestral and ddim),
"logsnr" (uniform in log-SNR, the default of the multistep solvers, whose steps are then equal in
lambda) and "karras" (Karras et al. 2022, rho = 7 in sigma / alpha). The non-uniform ones invert
the schedule by bisection, so they work for learned schedules.

Wrappers (`wrappers`): `with_trajectory` (every solver), `classifier_guidance` (eps_hat -
scale sigma_t grad_z log p(y | z_t), for a classifier of noisy inputs; every solver),
`guided_eps_fn` (classifier-free guidance, eps_w = (1 + w) eps(z, labels) - w eps(z, null), computed as eps_c + w (eps_c -
eps_u); a Python w = 0 skips the unconditional evaluation, bitwise the conditional model; it
wraps the network, so every solver), `with_inpainting` (one-step solvers only: it replaces the
known region with fresh noise after every step, which a multistep solver's extrapolation of its
history cannot absorb). Unsound combinations are refused by `check_chain_args` before any
compute.

sampler="ode" instead integrates the probability-flow ODE from z_1 at gamma(1) to gamma(0) with
an adaptive solver (`vdm_jax.ode.flow`; tolerances rtol / atol, no T): the map z_1 -> z_0 is
deterministic. `vdm_jax.ode.encode` is its inverse, data -> z_1, so that a user can encode,
interpolate between latents and decode with `sample(..., z_1=...)`.

eta convention (`sample`, `sample_model`): ancestral always eta = 1 (any other eta is an error);
ddim the given eta in [0, 1], None meaning 0; the multistep solvers and "ode" take none.

Which arguments a sampler accepts (`check_chain_args`, `SAMPLERS`, `resolve_eta`, ...) is decided
in `sampling.args`; a new sampler is a Solver factory (or a ReverseStep factory) and its entry
in `SAMPLERS`.
"""
from vdm_jax.sampling import args, entry, multistep, onestep, protocol, spacing, wrappers
from vdm_jax.sampling.args import (SAMPLERS, ChainArgs, Sampler, check_chain_args, is_chain,
                                   make_solver, resolve_eta, resolve_order, resolve_spacing,
                                   resolve_tolerances, resolve_trajectory_steps)
from vdm_jax.sampling.entry import SampleInfo, sample, sample_model
from vdm_jax.sampling.multistep import dpmpp_solver, unipc_solver
from vdm_jax.sampling.onestep import ReverseStep, ancestral_step, chain_step, ddim_step
from vdm_jax.sampling.protocol import Solver, Step, run_chain
from vdm_jax.sampling.spacing import SPACINGS, invert_gamma, step_times
from vdm_jax.sampling.wrappers import (Trajectory, classifier_guidance, guided_eps_fn,
                                       trajectory_of, with_inpainting, with_trajectory)

# The chain-level type under the name the one-step protocol used for it.
ChainStep = Solver

__all__ = ["SAMPLERS", "SPACINGS", "ChainArgs", "ChainStep", "ReverseStep", "SampleInfo",
           "Sampler", "Solver", "Step", "Trajectory", "ancestral_step", "chain_step",
           "check_chain_args", "classifier_guidance", "ddim_step", "dpmpp_solver",
           "guided_eps_fn", "invert_gamma",
           "is_chain", "make_solver", "resolve_eta", "resolve_order", "resolve_spacing",
           "resolve_tolerances", "resolve_trajectory_steps", "run_chain", "sample",
           "sample_model", "step_times", "trajectory_of", "unipc_solver", "with_inpainting",
           "with_trajectory"]
