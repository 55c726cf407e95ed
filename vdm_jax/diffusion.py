"""The Gaussian diffusion process: forward marginals, transitions, the top-down posterior.

Notation (Kingma et al. 2021): gamma = log(sigma^2 / alpha^2), variance preserving, s < t.

    q(z_t | x)        = N(alpha_t x, sigma_t^2 I)
    q(z_t | z_s)      = N(alpha_{t|s} z_s, sigma_{t|s}^2 I),
                        alpha_{t|s} = alpha_t / alpha_s,
                        sigma_{t|s}^2 = -expm1(gamma_s - gamma_t) sigma_t^2
    q(z_s | z_t, x)   = N(mu_Q, sigma_Q^2 I),
                        mu_Q = (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t + alpha_s (-expm1(gamma_s - gamma_t)) x
                        sigma_Q^2 = -expm1(gamma_s - gamma_t) sigma_s^2

Gamma arguments are scalars or have leading (batch) dimensions: a gamma of shape [B] broadcasts
against an x of shape [B, ...]. Returned variances have gamma's shape expanded with trailing
singleton axes (they broadcast against x); `expand_to` does that expansion and `sum_data_axes`
the reverse reduction to one number per example. All functions are pure: safe under jit, vmap,
grad, pmap and shard_map.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm_jax import schedules

Array = jax.Array


def expand_to(g: Array, x: Array) -> Array:
  """Reshapes g (scalar or [B, ...]) so it broadcasts against x ([B, ..., D...]) from the left."""
  g = jnp.asarray(g, jnp.float32)
  if g.ndim > x.ndim:
    raise ValueError(f"gamma has rank {g.ndim}, more than x's rank {x.ndim}.")
  return g.reshape(g.shape + (1,) * (x.ndim - g.ndim))


def sum_data_axes(v: Array) -> Array:
  """Sums every axis but the first: [B, ...] -> [B] (per-example totals, e.g. nats)."""
  return jnp.sum(v, axis=tuple(range(1, v.ndim)))


def marginal(x: Array, gamma_t: Array) -> tuple[Array, Array]:
  """q(z_t | x): returns (mean alpha_t x [x.shape], variance sigma_t^2 [broadcastable])."""
  g = expand_to(gamma_t, x)
  return schedules.alpha(g) * x, schedules.sigma_sq(g)


def sample_marginal(key: Array, x: Array, gamma_t: Array) -> tuple[Array, Array]:
  """Draws z_t ~ q(z_t | x). Returns (z_t, eps), both of x's shape, z_t = alpha_t x + sigma_t eps."""
  g = expand_to(gamma_t, x)
  eps = jax.random.normal(key, x.shape, jnp.float32)
  return schedules.alpha(g) * x + schedules.sigma(g) * eps, eps


def transition(z_s: Array, gamma_s: Array, gamma_t: Array) -> tuple[Array, Array]:
  """q(z_t | z_s) for s < t: returns (mean alpha_{t|s} z_s, variance sigma_{t|s}^2)."""
  gs, gt = expand_to(gamma_s, z_s), expand_to(gamma_t, z_s)
  alpha_ts = jnp.exp(0.5 * (schedules.log_alpha_sq(gt) - schedules.log_alpha_sq(gs)))
  var = -jnp.expm1(gs - gt) * schedules.sigma_sq(gt)
  return alpha_ts * z_s, var


def posterior(x: Array, z_t: Array, gamma_s: Array, gamma_t: Array) -> tuple[Array, Array]:
  """Top-down posterior q(z_s | z_t, x) for s < t: returns (mean mu_Q, variance sigma_Q^2)."""
  gs, gt = expand_to(gamma_s, z_t), expand_to(gamma_t, z_t)
  one_minus_ratio = -jnp.expm1(gs - gt)  # sigma_{t|s}^2 / sigma_t^2, never computed as 1 - small
  # alpha_{t|s} sigma_s^2 / sigma_t^2 in log space.
  log_coef_z = (0.5 * (schedules.log_alpha_sq(gt) - schedules.log_alpha_sq(gs))
                + schedules.log_sigma_sq(gs) - schedules.log_sigma_sq(gt))
  mean = jnp.exp(log_coef_z) * z_t + schedules.alpha(gs) * one_minus_ratio * x
  return mean, one_minus_ratio * schedules.sigma_sq(gs)


def gaussian_kl(mean1: Array, var1: Array, mean2: Array, var2: Array) -> Array:
  """Elementwise KL(N(mean1, var1) || N(mean2, var2)) in nats (broadcasting; sum it yourself)."""
  return 0.5 * (jnp.log(var2) - jnp.log(var1) + (var1 + jnp.square(mean1 - mean2)) / var2 - 1.0)


def predict_x(z_t: Array, eps_hat: Array, gamma_t: Array) -> Array:
  """x_hat = (z_t - sigma_t eps_hat) / alpha_t."""
  g = expand_to(gamma_t, z_t)
  return (z_t - schedules.sigma(g) * eps_hat) / schedules.alpha(g)


def reverse_step(key: Array | None, z_t: Array, eps_hat: Array, gamma_s: Array, gamma_t: Array,
                 eta: float | Array = 1.0) -> Array:
  """One step of the reverse chain z_t -> z_s (s < t), given the network's eps_hat(z_t).

      z_s = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps

  eta = 1 is ancestral sampling from p(z_s | z_t) = q(z_s | z_t, x = x_hat) (the two forms are
  algebraically identical); eta = 0 is deterministic DDIM (key may be None). Returns z_s [z_t.shape].
  """
  if key is None and not (isinstance(eta, (int, float)) and eta == 0):
    raise ValueError("reverse_step draws noise when eta != 0: pass a PRNG key, or eta=0 for DDIM.")
  gs, gt = expand_to(gamma_s, z_t), expand_to(gamma_t, z_t)
  x_hat = predict_x(z_t, eps_hat, gt)
  one_minus_ratio = -jnp.expm1(gs - gt)
  eta = jnp.asarray(eta, jnp.float32)
  # sigma_s^2 - eta^2 sigma_Q^2 = sigma_s^2 (exp(gs - gt) + (1 - eta^2)(1 - exp(gs - gt))).
  keep = jnp.exp(gs - gt) + (1.0 - jnp.square(eta)) * one_minus_ratio
  z_s = schedules.alpha(gs) * x_hat + schedules.sigma(gs) * jnp.sqrt(keep) * eps_hat
  if key is None:
    return z_s
  noise = jax.random.normal(key, z_t.shape, jnp.float32)
  return z_s + eta * schedules.sigma(gs) * jnp.sqrt(one_minus_ratio) * noise
