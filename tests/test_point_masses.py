"""The point-mass data distribution: its posterior against Bayes' rule in float64, its optimal eps.

Data: three 2x2x1 images with 16 levels and probabilities (0.5, 0.3, 0.2), encoded to (-1, 1).
"""
import chex
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import LOG_PROBS, POINTS, PROBS
from vdm_jax import point_masses, schedules

B = 12


def _alpha_sigma_sq(gamma):
  """alpha^2, sigma^2 in float64 for gamma [B]."""
  a2 = 1.0 / (1.0 + np.exp(np.asarray(gamma, np.float64)))
  return a2, 1.0 - a2


def _bayes_posterior(points, probs, z_t, gamma_t):
  """p(k | z_t) ∝ pi_k N(z_t; alpha_t x_k, sigma_t^2 I) in float64: [B, K].

  The Gaussian normaliser is the same for every k, so only the exponents matter.
  """
  points = np.asarray(points, np.float64).reshape(len(probs), -1)     # [K, D]
  z = np.asarray(z_t, np.float64).reshape(z_t.shape[0], -1)           # [B, D]
  a2, s2 = _alpha_sigma_sq(np.broadcast_to(gamma_t, (z.shape[0],)))
  sq = np.sum((z[:, None] - np.sqrt(a2)[:, None, None] * points[None]) ** 2, axis=-1)
  log_joint = np.log(probs)[None] - sq / (2.0 * s2[:, None])
  log_joint -= log_joint.max(axis=1, keepdims=True)
  joint = np.exp(log_joint)
  return joint / joint.sum(axis=1, keepdims=True)


def _draw(gamma_t, seed):
  """Latents z_t ~ q(z_t | x_k) for points k drawn from PROBS: (k [B], z_t [B, 2, 2, 1] float32)."""
  rng = np.random.default_rng(seed)
  k = rng.choice(len(PROBS), size=B, p=PROBS)
  a2, s2 = _alpha_sigma_sq(np.broadcast_to(gamma_t, (B,)))
  x = np.asarray(POINTS, np.float64)[k]
  z = np.sqrt(a2)[:, None, None, None] * x + np.sqrt(s2)[:, None, None, None] * rng.normal(
      size=x.shape)
  return k, jnp.asarray(z, jnp.float32)


@pytest.mark.parametrize("gamma", [-6.0, -3.0, -1.0, 0.0, 2.0, schedules.GAMMA_MAX])
def test_posterior_equals_bayes_rule(gamma):
  # Both sides see the same float32 gamma and z_t.
  gamma = np.float32(gamma)
  _, z = _draw(gamma, seed=int(10 * gamma) + 100)
  post = point_masses.posterior(POINTS, LOG_PROBS, z, gamma)
  chex.assert_shape(post, (B, 3))
  ref = _bayes_posterior(POINTS, PROBS, z, gamma)
  np.testing.assert_allclose(post, ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.sum(post, axis=1), 1.0, rtol=1e-6)
  # The posterior is informative here: not just the prior.
  if gamma < 0:
    assert np.max(np.abs(ref - PROBS)) > 0.1


def test_posterior_per_example_gamma():
  gamma = jnp.linspace(-5.0, 3.0, B)
  _, z = _draw(np.asarray(gamma), seed=1)
  post = point_masses.posterior(POINTS, LOG_PROBS, z, gamma)
  np.testing.assert_allclose(post, _bayes_posterior(POINTS, PROBS, z, np.asarray(gamma)),
                             rtol=1e-4, atol=1e-5)
  for b in (0, B - 1):
    chex.assert_trees_all_close(post[b],
                                point_masses.posterior(POINTS, LOG_PROBS, z[b:b + 1], gamma[b])[0],
                                rtol=1e-6, atol=1e-7)


def test_posterior_at_gamma_min_is_the_generating_point():
  k, z = _draw(schedules.GAMMA_MIN, seed=2)
  post = point_masses.posterior(POINTS, LOG_PROBS, z, jnp.float32(schedules.GAMMA_MIN))
  np.testing.assert_allclose(post, np.eye(3)[k], atol=1e-6)


def test_posterior_excludes_points_of_probability_zero():
  _, z = _draw(0.0, seed=3)
  log_probs = jnp.log(jnp.array([0.6, 0.0, 0.4], jnp.float32))
  post = point_masses.posterior(POINTS, log_probs, z, jnp.float32(0.0))
  np.testing.assert_array_equal(post[:, 1], 0.0)
  np.testing.assert_allclose(post, _bayes_posterior(POINTS, [0.6, 1e-300, 0.4], z, 0.0),
                             rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("gamma", [-4.0, 0.0, 3.0])
def test_optimal_eps_is_the_posterior_mean_noise(gamma):
  """eps*(z_t) = (z_t - alpha_t E[x | z_t]) / sigma_t, with E[x | z_t] from Bayes' rule."""
  gamma = np.float32(gamma)
  _, z = _draw(gamma, seed=4)
  eps = point_masses.optimal_eps_fn(POINTS, LOG_PROBS)(z, jnp.full((B,), gamma))
  chex.assert_shape(eps, z.shape)
  post = _bayes_posterior(POINTS, PROBS, z, gamma)
  x_mean = np.tensordot(post, np.asarray(POINTS, np.float64), axes=1)
  a2, s2 = _alpha_sigma_sq(gamma)
  ref = (np.asarray(z, np.float64) - np.sqrt(a2) * x_mean) / np.sqrt(s2)
  np.testing.assert_allclose(eps, ref, rtol=1e-4, atol=1e-4)


def test_optimal_eps_default_is_uniform():
  _, z = _draw(-1.0, seed=5)
  gamma = jnp.float32(-1.0)
  uniform = jnp.full((3,), -np.log(3.0), jnp.float32)
  chex.assert_trees_all_close(point_masses.optimal_eps_fn(POINTS)(z, gamma),
                              point_masses.optimal_eps_fn(POINTS, uniform)(z, gamma),
                              rtol=1e-6, atol=1e-6)


class TransformationsTest(chex.TestCase):
  """The optimal eps gives the same numbers eagerly, under jit and under pmap (8 CPU devices)."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_optimal_eps_fn(self):
    _, z = _draw(-2.0, seed=6)
    gamma = jnp.full((B,), -2.0)
    eps_fn = point_masses.optimal_eps_fn(POINTS, LOG_PROBS)
    chex.assert_trees_all_close(self.variant(eps_fn)(z, gamma), eps_fn(z, gamma), rtol=1e-5,
                                atol=1e-5)
