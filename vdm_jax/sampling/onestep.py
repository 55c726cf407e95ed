"""One-step solvers: the ancestral chain and DDIM, from a `ReverseStep`.

A one-step sampler is a function of the current latent only,

    step(key, z_t, eps_hat, gamma_s, gamma_t) -> z_s        (s < t, shapes of z_t),

and `chain_step` makes it a `Solver` whose state is () (one_step=True). Both built-in steps are
`diffusion.reverse_step`:

    x_hat = (z_t - sigma_t eps_hat) / alpha_t
    z_s   = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps

ancestral: eta = 1, z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat); DDIM: eta in [0, 1], eta = 0
deterministic (first order in the step size: DDIM is the first-order exponential integrator
of the probability-flow ODE in data-prediction form).
"""
from __future__ import annotations

from typing import Protocol

from vdm_jax import diffusion
from vdm_jax.sampling.protocol import Array, Solver


class ReverseStep(Protocol):
  """One step z_t -> z_s (s < t) of the reverse chain, given the network's eps_hat(z_t).

  key: a PRNG key for this step's draws (a deterministic step ignores it); z_t, eps_hat:
  float32 [B, ...]; gamma_s, gamma_t: scalar or [B]. Returns z_s, float32 of z_t's shape.
  """

  def __call__(self, key: Array, z_t: Array, eps_hat: Array, gamma_s: Array,
               gamma_t: Array) -> Array: ...


def ancestral_step() -> ReverseStep:
  """z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat(z_t)) (`diffusion.reverse_step` at eta = 1)."""
  def step(key, z_t, eps_hat, gamma_s, gamma_t):
    return diffusion.reverse_step(key, z_t, eps_hat, gamma_s, gamma_t, 1.0)
  return step


def ddim_step(eta: float) -> ReverseStep:
  """DDIM: z_s = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps.

  eta in [0, 1] (a Python number); eta = 0 draws nothing (the key is ignored), eta = 1 is the
  ancestral step.
  """
  if eta == 0.0:
    def step(key, z_t, eps_hat, gamma_s, gamma_t):
      del key   # deterministic: no draw, so no key in the compiled chain either
      return diffusion.reverse_step(None, z_t, eps_hat, gamma_s, gamma_t, 0.0)
  else:
    def step(key, z_t, eps_hat, gamma_s, gamma_t):
      return diffusion.reverse_step(key, z_t, eps_hat, gamma_s, gamma_t, eta)
  return step


def chain_step(step: ReverseStep) -> Solver:
  """The `Solver` of a one-step sampler: state (), z_s = step(key, z_t, eps_hat, gamma_s,
  gamma_t) with the chain's per-step key."""
  def init(z_1, gamma_1):
    del gamma_1
    return z_1, ()

  def update(key, z_t, eps_hat, state, step_info):
    return step(key, z_t, eps_hat, step_info.gamma_s, step_info.gamma_t), state

  return Solver(init=init, update=update, one_step=True)
