"""Data drawn from a few fixed points: a distribution whose optimal denoiser has a closed form.

For data x drawn from K points x_k (encoded, [K, ...]) with probabilities pi_k, Bayes' rule with
q(z_t | x) = N(alpha_t x, sigma_t^2 I) gives the posterior over the points

    p(k | z_t) = softmax_k(log pi_k - ||z_t - alpha_t x_k||^2 / (2 sigma_t^2))

so E[x | z_t] = sum_k p(k | z_t) x_k and the optimal noise prediction is
eps*(z_t) = (z_t - alpha_t E[x | z_t]) / sigma_t. It minimises every VDM diffusion term, which
makes exact statements testable: the continuous-time bound then equals the data entropy (up to
the prior and reconstruction terms), and the reverse chain reproduces the points.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from vdm_jax import diffusion, schedules

Array = jax.Array


def posterior(points: Array, log_probs: Array, z_t: Array, gamma_t: Array) -> Array:
  """p(k | z_t), the probability that z_t came from point k: [B, K], rows summing to 1.

  Args:
    points: [K, ...] float32, the encoded points x_k (data space, e.g. bin centres in (-1, 1)).
    log_probs: [K], log pi_k in nats (the softmax normalises them; -inf excludes a point).
    z_t: [B, ...] float32, latents with the points' trailing shape.
    gamma_t: scalar or [B], gamma(t) = log(sigma_t^2 / alpha_t^2) of each latent.
  """
  g = diffusion.expand_to(gamma_t, z_t)
  diff = z_t[:, None] - schedules.alpha(g)[:, None] * points[None]        # [B, K, ...]
  sq = jnp.sum(jnp.square(diff), axis=tuple(range(2, diff.ndim)))          # [B, K]
  g_b = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (z_t.shape[0],))
  return jax.nn.softmax(log_probs[None] - 0.5 * sq / schedules.sigma_sq(g_b)[:, None], axis=-1)


def optimal_eps_fn(points: Array, log_probs: Array | None = None):
  """The optimal eps_fn(z_t [B, ...], gamma_t scalar or [B]) -> eps* [B, ...] for these points.

  Args:
    points: [K, ...] float32, the encoded points.
    log_probs: [K] log-probabilities in nats; None means uniform (log 1/K each).
  """
  if log_probs is None:
    log_probs = jnp.full((points.shape[0],), -jnp.log(points.shape[0]), jnp.float32)

  def eps_fn(z_t: Array, gamma_t: Array) -> Array:
    w = posterior(points, log_probs, z_t, gamma_t)
    x_mean = jnp.tensordot(w, points, axes=1)
    g = diffusion.expand_to(gamma_t, z_t)
    return (z_t - schedules.alpha(g) * x_mean) / schedules.sigma(g)

  return eps_fn
