"""Schedule objective ("elbo" | "variance"), training weightings, and the variance diagnostic."""
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
import pytest

from vdm_jax import losses, schedules

X_INT = jax.random.randint(jax.random.PRNGKey(0), (16, 2, 2, 1), 0, 256)
KEY = jax.random.PRNGKey(1)
SCHEDULE = schedules.MonotoneNet(-8.0, 4.0, n_features=4)
ETA0 = SCHEDULE.init(jax.random.PRNGKey(2), jnp.zeros(2))


def _eps_fn(theta):
  def eps_fn(z, gamma):
    return theta[0] * z + theta[1] * jnp.tanh(z) * jax.nn.sigmoid(gamma)[:, None, None, None]
  return eps_fn


THETA0 = jnp.array([0.7, -0.4])


def _objective(eta, theta, schedule_objective):
  obj, _ = losses.training_loss(_eps_fn(theta), lambda t: SCHEDULE.apply(eta, t), X_INT, KEY,
                                schedule_objective=schedule_objective)
  return obj.mean()


def _variance_target(eta, theta):
  """mean(recon + prior) + mean(L_diff^2): what the schedule minimises under "variance"."""
  loss = losses.vdm_loss(_eps_fn(theta), lambda t: SCHEDULE.apply(eta, t), X_INT, KEY)
  return jnp.mean(loss.recon + loss.prior) + jnp.mean(jnp.square(loss.diffusion))


def test_variance_gradient_matches_finite_differences():
  grad_eta = jax.grad(_objective)(ETA0, THETA0, "variance")
  flat, unravel = ravel_pytree(ETA0)
  from_backprop = ravel_pytree(grad_eta)[0]
  numeric = []
  h = 1e-2
  for i in range(flat.size):
    e = jnp.zeros_like(flat).at[i].set(h)
    up, down = _variance_target(unravel(flat + e), THETA0), _variance_target(unravel(flat - e),
                                                                             THETA0)
    numeric.append((up - down) / (2 * h))
  numeric = np.asarray(numeric)
  scale = np.max(np.abs(numeric))
  np.testing.assert_allclose(from_backprop, numeric, rtol=1e-2, atol=1e-2 * scale)
  # And it differs from the bound's gradient (the objective really changed).
  grad_elbo = ravel_pytree(jax.grad(_objective)(ETA0, THETA0, "elbo"))[0]
  assert np.max(np.abs(grad_elbo - from_backprop)) > 0.1 * scale


def test_score_network_gradient_unchanged_by_variance_objective():
  g_elbo = jax.grad(_objective, argnums=1)(ETA0, THETA0, "elbo")
  g_var = jax.grad(_objective, argnums=1)(ETA0, THETA0, "variance")
  chex.assert_trees_all_close(g_var, g_elbo, rtol=1e-6)
  assert np.all(np.abs(g_elbo) > 0)


def test_variance_objective_leaves_values_unchanged():
  eta, eps_fn = ETA0, _eps_fn(THETA0)
  gamma_fn = lambda t: SCHEDULE.apply(eta, t)
  obj, bound = losses.training_loss(eps_fn, gamma_fn, X_INT, KEY, schedule_objective="variance")
  np.testing.assert_allclose(obj, bound.total, rtol=1e-6)


LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)
G_RANGE = schedules.GAMMA_MAX - schedules.GAMMA_MIN     # gamma'(t) of LINEAR


def _linear(t):
  return LINEAR.apply({}, t)


def test_weightings():
  eps_fn = _eps_fn(THETA0)
  elbo_obj, bound = losses.training_loss(eps_fn, _linear, X_INT, KEY, weighting="elbo")
  np.testing.assert_array_equal(elbo_obj, losses.vdm_loss(eps_fn, _linear, X_INT, KEY).total)

  # simple: the unweighted eps-MSE. For a linear schedule L_diff = 0.5 (gmax - gmin) mse.
  simple_obj, bound_s = losses.training_loss(eps_fn, _linear, X_INT, KEY, weighting="simple")
  mse = bound.diffusion / (0.5 * G_RANGE)
  # The weighted term is recovered as a difference of float32 sums: exact up to a few roundings
  # of the larger terms, where the diffusion term is small next to recon + prior.
  def assert_close(actual, desired):
    tol = 1e-5 * np.abs(desired) + 4 * np.finfo(np.float32).eps * np.abs(bound.recon + bound.prior)
    assert np.all(np.abs(actual - desired) <= tol), (actual, desired)

  assert_close(simple_obj - bound.recon - bound.prior, mse)
  np.testing.assert_array_equal(bound_s.diffusion, bound.diffusion)   # reported bound unweighted

  # sigmoid: w = sigmoid(b - lambda) = sigmoid(b + gamma_t) on the same integrand.
  sig_obj, _ = losses.training_loss(eps_fn, _linear, X_INT, KEY, weighting="sigmoid",
                                    sigmoid_bias=-1.0)
  t = losses.sample_times(jax.random.split(KEY, 3)[0], X_INT.shape[0])
  w = jax.nn.sigmoid(-1.0 + _linear(t))
  assert_close(sig_obj - bound.recon - bound.prior, w * bound.diffusion)


def test_objective_argument_errors():
  with pytest.raises(ValueError, match="Unknown weighting 'mse'"):
    losses.training_loss(_eps_fn(THETA0), _linear, X_INT, KEY, weighting="mse")
  with pytest.raises(ValueError, match="Unknown schedule_objective"):
    losses.training_loss(_eps_fn(THETA0), _linear, X_INT, KEY, schedule_objective="var")
  with pytest.raises(ValueError, match="needs weighting='elbo'"):
    losses.training_loss(_eps_fn(THETA0), _linear, X_INT, KEY, weighting="simple",
                         schedule_objective="variance")


def test_diffusion_loss_std_closed_form():
  """eps_hat = 0 and a linear schedule: L = 0.5 g' chi^2_D, so std = 0.5 g' sqrt(2 D)."""
  x = jnp.zeros((4, 3, 3, 1), jnp.int32)
  std = losses.diffusion_loss_std(lambda z, g: jnp.zeros_like(z), _linear, x,
                                  jax.random.PRNGKey(0), num_draws=4000)
  expected = 0.5 * G_RANGE * math.sqrt(2 * 9)
  # The sample std of n draws has relative standard error ~ sqrt((kurtosis - 1) / (4 n)).
  rel_se = math.sqrt((2 + 12 / 9) / (4 * 4000))   # kurtosis of chi^2_9 is 3 + 12/9
  np.testing.assert_allclose(std, expected, rtol=4 * rel_se)
