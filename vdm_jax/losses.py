"""The VDM loss: the negative ELBO as recon + prior + diffusion, in nats per example.

    recon     = E_q(z_0|x) [-log p(x | z_0)]                    (one z_0 sample)
    prior     = KL(q(z_1 | x) || N(0, I))                       (closed form)
    diffusion = continuous time (T = 0):  0.5 gamma'(t) ||eps - eps_hat(z_t; gamma_t)||^2, t ~ U(0, 1)
                discrete time T:          0.5 T expm1(gamma_t - gamma_s) ||eps - eps_hat||^2,
                                          t = i / T, s = (i - 1) / T, i ~ U{1..T}

One time per example; with `antithetic=True` the batch shares one uniform u and uses the
low-discrepancy times t_b = (u + b / B) mod 1 (for discrete time this puts exactly B / T examples
on each step when T divides B). gamma'(t) is the exact derivative of `gamma_fn` (a jvp).
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vdm_jax import diffusion, likelihood

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]     # (z_t [B, ...], gamma_t [B]) -> eps_hat [B, ...]
GammaFn = Callable[[Array], Array]          # t [B] -> gamma [B], elementwise and differentiable


class VDMLoss(NamedTuple):
  """Per-example terms of the negative ELBO, each [B] in nats."""
  recon: Array
  prior: Array
  diffusion: Array

  @property
  def total(self) -> Array:
    """recon + prior + diffusion: [B] nats."""
    return self.recon + self.prior + self.diffusion


def sample_times(key: Array, batch_size: int, antithetic: bool = True) -> Array:
  """t [B] in [0, 1): i.i.d. uniform, or (u + b/B) mod 1 with a single u when antithetic."""
  if antithetic:
    u = jax.random.uniform(key, (), jnp.float32)
    return jnp.mod(u + jnp.arange(batch_size, dtype=jnp.float32) / batch_size, 1.0)
  return jax.random.uniform(key, (batch_size,), jnp.float32)


def discretise_times(t: Array, T: int) -> tuple[Array, Array]:
  """Maps t in [0, 1) to the step i = floor(t T) + 1 in {1..T}; returns (s, t) = ((i-1)/T, i/T)."""
  i = jnp.clip(jnp.floor(t * T) + 1.0, 1.0, float(T))
  return (i - 1.0) / T, i / T


def sum_data_axes(v: Array) -> Array:
  """Sums every axis but the first: [B, ...] -> [B]."""
  return jnp.sum(v, axis=tuple(range(1, v.ndim)))


class DiffusionTerms(NamedTuple):
  """What the diffusion integrand is made of, per example ([B] each unless noted)."""
  t: Array          # time in [0, 1]
  gamma_t: Array    # gamma(t)
  weight: Array     # 0.5 gamma'(t) (continuous) or 0.5 T expm1(gamma_t - gamma_s) (discrete)
  mse: Array        # ||eps - eps_hat||^2 summed over data dimensions

  @property
  def loss(self) -> Array:
    return self.weight * self.mse


def diffusion_terms(eps_fn: EpsFn, gamma_fn: GammaFn, x: Array, t: Array, key: Array, *,
                    T: int = 0) -> DiffusionTerms:
  """The diffusion term's parts at times t [B] for encoded data x [B, ...]."""
  if T > 0:
    s, t = discretise_times(t, T)
    gamma_s, gamma_t = gamma_fn(s), gamma_fn(t)
    weight = 0.5 * T * jnp.expm1(gamma_t - gamma_s)
  else:
    gamma_t, dgamma_dt = jax.jvp(gamma_fn, (t,), (jnp.ones_like(t),))
    weight = 0.5 * dgamma_dt
  z_t, eps = diffusion.sample_marginal(key, x, gamma_t)
  eps_hat = eps_fn(z_t, gamma_t)
  mse = sum_data_axes(jnp.square(eps - eps_hat.astype(jnp.float32)))
  return DiffusionTerms(t=t, gamma_t=gamma_t, weight=weight, mse=mse)


def _check_T(T) -> None:
  if not isinstance(T, int) or isinstance(T, bool) or T < 0:
    raise ValueError(f"T must be an int >= 0 (0 = continuous time), got {T!r}.")


def vdm_loss(eps_fn: EpsFn, gamma_fn: GammaFn, x_int: Array, key: Array, *,
             vocab_size: int = 256, T: int = 0, antithetic: bool = True) -> VDMLoss:
  """The VDM negative ELBO per example, split into its three terms (nats).

  Args:
    eps_fn: (z_t [B, ...] float32, gamma_t [B]) -> eps_hat [B, ...], the noise prediction.
    gamma_fn: t [B] -> gamma [B]; must be elementwise in t and differentiable (its jvp gives
      gamma'(t)). gamma_fn(0) and gamma_fn(1) are the schedule's endpoints.
    x_int: integer data [B, ...] with values in [0, vocab_size) (not checked under trace: use
      `likelihood.check_range` in the data pipeline).
    key: PRNG key; the times, the diffusion noise and the z_0 noise all come from it.
    vocab_size: number of discrete values per dimension (256 for 8-bit images).
    T: 0 for the continuous-time loss, else the number of discrete steps.
    antithetic: low-discrepancy times across the batch (lower variance, same expectation).

  Returns:
    VDMLoss(recon, prior, diffusion), each [B] in nats; `.total` is their sum.
  """
  likelihood.check_inputs(x_int, vocab_size)
  _check_T(T)
  batch_size = x_int.shape[0]
  x = likelihood.encode(x_int, vocab_size)
  key_t, key_eps, key_0 = jax.random.split(key, 3)

  gamma_ends = gamma_fn(jnp.array([0.0, 1.0], jnp.float32))
  gamma_0, gamma_1 = gamma_ends[0], gamma_ends[1]

  z_0, _ = diffusion.sample_marginal(key_0, x, gamma_0)
  recon = likelihood.recon_loss(x_int, z_0, gamma_0, vocab_size)
  prior = likelihood.prior_kl(x, gamma_1)

  t = sample_times(key_t, batch_size, antithetic)
  terms = diffusion_terms(eps_fn, gamma_fn, x, t, key_eps, T=T)
  return VDMLoss(recon=recon, prior=jnp.broadcast_to(prior, (batch_size,)),
                 diffusion=terms.loss)
