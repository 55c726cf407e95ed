"""Forward process and posterior against independent float64 computations."""
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion, schedules

G_MIN, G_MAX = schedules.GAMMA_MIN, schedules.GAMMA_MAX
GAMMAS = [G_MIN, -8.0, -2.0, 0.0, 3.0, G_MAX]
PAIRS = [(s, t) for s, t in itertools.combinations(GAMMAS, 2)]
PAIRS += [(G_MIN, G_MIN + 1e-3), (-5.0, -4.999), (G_MAX - 1e-3, G_MAX)]   # s and t 1e-3 apart


def _a2(g):
  return 1.0 / (1.0 + np.exp(np.float64(g)))


def _bayes_posterior(x, z_t, gs, gt):
  """q(z_s | z_t, x) ∝ q(z_s | x) q(z_t | z_s), multiplied out in float64."""
  a2s, a2t = _a2(gs), _a2(gt)
  s2s, s2t = 1 - a2s, 1 - a2t
  a_ts2 = a2t / a2s
  s2_ts = s2t - a_ts2 * s2s
  precision = 1 / s2s + a_ts2 / s2_ts
  mean = (np.sqrt(a2s) * x / s2s + np.sqrt(a_ts2) * z_t / s2_ts) / precision
  return mean, 1 / precision


@pytest.mark.parametrize("gs,gt", PAIRS)
def test_posterior_equals_bayes_rule(gs, gt):
  # Both sides see the same float32 gammas (their rounding alone is ~1e-3 of a 1e-3 gap).
  gs, gt = np.float32(gs), np.float32(gt)
  rng = np.random.default_rng(0)
  x = rng.uniform(-1, 1, size=(3, 4, 4, 2))
  z_t = np.sqrt(_a2(gt)) * x + np.sqrt(1 - _a2(gt)) * rng.normal(size=x.shape)
  mean, var = diffusion.posterior(jnp.asarray(x, jnp.float32), jnp.asarray(z_t, jnp.float32),
                                  gs, gt)
  mean_ref, var_ref = _bayes_posterior(x, z_t, gs, gt)
  np.testing.assert_allclose(var, var_ref, rtol=2e-4)
  # Float32 inputs carry ~1e-7 relative error, amplified by the coefficients (at most ~1/alpha).
  np.testing.assert_allclose(mean, mean_ref, rtol=1e-4, atol=2e-5)


def test_posterior_batched_gamma_broadcasts():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.uniform(-1, 1, size=(3, 2, 2, 1)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(3, 2, 2, 1)), jnp.float32)
  gs, gt = jnp.array([-10.0, -1.0, 2.0]), jnp.array([-9.0, 0.5, 4.0])
  mean, var = diffusion.posterior(x, z, gs, gt)
  for b in range(3):
    mean_b, var_b = diffusion.posterior(x[b:b + 1], z[b:b + 1], gs[b], gt[b])
    np.testing.assert_allclose(mean[b], mean_b[0], rtol=1e-6)
    np.testing.assert_allclose(var[b].ravel(), np.ravel(var_b), rtol=1e-6)


@pytest.mark.parametrize("gs,gt", PAIRS)
def test_marginal_composed_with_transition_is_marginal(gs, gt):
  x = jnp.linspace(-1, 1, 12).reshape(1, 12)
  mean_s, var_s = diffusion.marginal(x, gs)
  # q(z_t|x) = ∫ q(z_t|z_s) q(z_s|x): mean alpha_{t|s} mean_s, var alpha_{t|s}^2 var_s + var_{t|s}.
  mean_ts, var_ts = diffusion.transition(mean_s, gs, gt)
  alpha_ts = mean_ts[0, -1] / mean_s[0, -1]
  mean_t, var_t = diffusion.marginal(x, gt)
  np.testing.assert_allclose(mean_ts, mean_t, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(alpha_ts ** 2 * var_s + var_ts, var_t, rtol=1e-5)


def test_sum_data_axes():
  v = jnp.arange(24.0).reshape(2, 3, 4)
  total = diffusion.sum_data_axes(v)
  chex.assert_shape(total, (2,))
  np.testing.assert_array_equal(total, [66.0, 210.0])
  np.testing.assert_array_equal(diffusion.sum_data_axes(jnp.ones((5, 1))), np.ones(5))


def _batch():
  """x, z [3, 2, 2, 1] and per-example gamma_s < gamma_t [3]."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.uniform(-1, 1, size=(3, 2, 2, 1)), jnp.float32)
  z = jnp.asarray(rng.normal(size=(3, 2, 2, 1)), jnp.float32)
  return x, z, jnp.array([G_MIN, -1.0, 2.0]), jnp.array([-9.0, 0.5, G_MAX])


class TransformationsTest(chex.TestCase):
  """The pure functions give the same numbers eagerly, under jit and under pmap (8 CPU devices)."""

  def _check(self, fn, *args):
    got = self.variant(fn)(*args)
    chex.assert_shape(got[0], (3, 2, 2, 1))
    chex.assert_shape(got[1], (3, 1, 1, 1))    # variances broadcast against the data
    chex.assert_trees_all_close(got, fn(*args), rtol=1e-6, atol=1e-7)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_marginal(self):
    x, _, _, gt = _batch()
    self._check(diffusion.marginal, x, gt)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_transition(self):
    _, z, gs, gt = _batch()
    self._check(diffusion.transition, z, gs, gt)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_posterior(self):
    self._check(diffusion.posterior, *_batch())


def test_gaussian_kl_matches_monte_carlo():
  m1, v1, m2, v2 = 0.3, 0.5, -0.2, 1.7
  kl = float(diffusion.gaussian_kl(m1, v1, m2, v2))
  z = np.random.default_rng(0).normal(m1, np.sqrt(v1), size=400_000)
  log_ratio = (-0.5 * np.log(v1) - (z - m1) ** 2 / (2 * v1)
               + 0.5 * np.log(v2) + (z - m2) ** 2 / (2 * v2))
  se = log_ratio.std() / np.sqrt(z.size)
  assert abs(log_ratio.mean() - kl) < 4 * se, (kl, log_ratio.mean(), se)
  assert float(diffusion.gaussian_kl(m1, v1, m1, v1)) == pytest.approx(0.0, abs=1e-7)


def test_reverse_step_ancestral_is_posterior_draw():
  """eta=1: z_s = mu_Q(x_hat) + sigma_Q eps with the same noise."""
  key = jax.random.PRNGKey(0)
  z_t = jax.random.normal(key, (2, 3, 3, 1))
  eps_hat = 0.3 * jax.random.normal(jax.random.PRNGKey(1), z_t.shape)
  gs, gt = -3.0, 1.0
  z_s = diffusion.reverse_step(jax.random.PRNGKey(2), z_t, eps_hat, gs, gt, eta=1.0)
  x_hat = diffusion.predict_x(z_t, eps_hat, gt)
  mean, var = diffusion.posterior(x_hat, z_t, gs, gt)
  noise = jax.random.normal(jax.random.PRNGKey(2), z_t.shape)
  np.testing.assert_allclose(z_s, mean + jnp.sqrt(var) * noise, rtol=1e-5, atol=1e-6)


def test_reverse_step_ddim_is_deterministic_and_consistent():
  """eta=0: z_s = alpha_s x_hat + sigma_s eps_hat, no noise needed."""
  z_t = jax.random.normal(jax.random.PRNGKey(0), (2, 4))
  eps_hat = jax.random.normal(jax.random.PRNGKey(1), (2, 4))
  gs, gt = -2.0, 3.0
  z_s = diffusion.reverse_step(None, z_t, eps_hat, gs, gt, eta=0.0)
  x_hat = diffusion.predict_x(z_t, eps_hat, gt)
  expect = schedules.alpha(gs) * x_hat + schedules.sigma(gs) * eps_hat
  np.testing.assert_allclose(z_s, expect, rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="pass a PRNG key"):
    diffusion.reverse_step(None, z_t, eps_hat, gs, gt, eta=1.0)


def test_finite_everywhere_for_gamma_in_range():
  g = jnp.linspace(-20.0, 20.0, 81)
  gs, gt = g[:-1], g[1:]
  x = jnp.linspace(-0.99, 0.99, 80)[:, None]
  z = 0.5 * jnp.ones_like(x)
  outs = [*diffusion.marginal(x, gt), *diffusion.transition(z, gs, gt),
          *diffusion.posterior(x, z, gs, gt),
          diffusion.reverse_step(jax.random.PRNGKey(0), z, z, gs, gt, eta=0.5)]
  for o in outs:
    assert np.all(np.isfinite(o))
  grads = jax.grad(lambda a, b: jnp.sum(diffusion.posterior(x, z, a, b)[0]
                                        + diffusion.posterior(x, z, a, b)[1]),
                   argnums=(0, 1))(gs, gt)
  for gr in grads:
    assert np.all(np.isfinite(gr))
