"""The noisy classifier p(y | z_t) and its loss: cross-entropies computed by hand, the forward
marginal it is trained on (Monte Carlo), gradients only to the classifier, guidance-ready
log-probabilities."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import likelihood, losses, nets, sampling, schedules

LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)


def gamma_fn(t):
  return LINEAR.apply({}, t)


def test_the_loss_is_the_cross_entropy_of_the_softmax_by_hand():
  x = jnp.zeros((6, 4, 4, 1), jnp.int32)
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  const = lambda z, g: jnp.broadcast_to(jnp.log(jnp.array([0.2, 0.3, 0.5])), (z.shape[0], 3))
  loss, _ = losses.noisy_classifier_loss(const, gamma_fn, x, labels, jax.random.key(0))
  np.testing.assert_allclose(loss, -np.log([0.2, 0.3, 0.5, 0.2, 0.3, 0.5]), rtol=1e-6)
  # Logits (0, gamma_t): label 1 costs softplus(-gamma_t), label 0 softplus(gamma_t).
  by_gamma = lambda z, g: jnp.stack([jnp.zeros_like(g), g], axis=-1)
  loss, t = losses.noisy_classifier_loss(by_gamma, gamma_fn, x, labels % 2, jax.random.key(1))
  g = schedules.GAMMA_MIN + (schedules.GAMMA_MAX - schedules.GAMMA_MIN) * np.asarray(t, np.float64)
  expected = np.where(np.asarray(labels) % 2 == 1, np.log1p(np.exp(-g)), np.log1p(np.exp(g)))
  np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-7)   # float32 log-softmax
  assert np.all((0 <= t) & (t < 1)) and len(np.unique(np.round(np.diff(np.sort(t)), 5))) == 1


def test_the_classifier_sees_the_forward_marginal():
  """Logits (0, z[first pixel]): label 0 costs softplus(z), so the loss reveals z_t, whose
  standardised residual (z_t - alpha_t x) / sigma_t must be N(0, 1)."""
  n = 4000
  x = jnp.full((n, 2, 2, 1), 200, jnp.int32)
  first = lambda z, g: jnp.stack([jnp.zeros(z.shape[0]), z.reshape(z.shape[0], -1)[:, 0]], -1)
  loss, t = losses.noisy_classifier_loss(first, gamma_fn, x, jnp.zeros(n, jnp.int32),
                                         jax.random.key(2))
  z = np.log(np.expm1(np.asarray(loss, np.float64)))
  g = np.asarray(gamma_fn(t), np.float64)
  alpha, sigma = np.sqrt(1 / (1 + np.exp(g))), np.sqrt(1 / (1 + np.exp(-g)))
  x_enc = float(likelihood.encode(jnp.array([200]))[0])
  keep = g > -6    # softplus inverse is accurate where z is not far below 0 in float32
  u = (z[keep] - alpha[keep] * x_enc) / sigma[keep]
  se = 1 / math.sqrt(keep.sum())
  assert abs(u.mean()) < 4 * se and abs(u.std() - 1) < 4 * se * math.sqrt(0.5) + 0.01


def test_network_gradients_reach_every_classifier_parameter_and_never_the_schedule():
  clf = nets.NoisyClassifier(num_classes=3, ch=8, ch_mult=(1, 2))
  schedule = schedules.LearnedLinear(gamma_min=-10.0, gamma_max=4.0)
  x = jax.random.randint(jax.random.key(3), (4, 8, 8, 1), 0, 256)
  labels = jnp.array([0, 1, 2, 1])
  params = clf.init(jax.random.key(4), jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
  sched_params = schedule.init(jax.random.key(5), jnp.zeros((1,)))

  def loss(p, sp):
    per_example, _ = losses.noisy_classifier_loss(
        lambda z, g: clf.apply(p, z, g), lambda t: schedule.apply(sp, t), x, labels,
        jax.random.key(6))
    return jnp.mean(per_example)

  # Three steps first: the blocks start as the identity (zero-initialised last convolution and
  # conditioning projection, as in the score networks), so the gradient reaches the block
  # interiors after one step, the projections after two, the gamma embedding after three.
  grad_fn = jax.jit(jax.grad(loss, argnums=(0, 1)))
  for _ in range(3):
    grads, _ = grad_fn(params, sched_params)
    params = jax.tree_util.tree_map(lambda p, g: p - 0.1 * g, params, grads)
  grads, sched_grads = grad_fn(params, sched_params)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.any(np.asarray(leaf) != 0), jax.tree_util.keystr(path)
  for leaf in jax.tree_util.tree_leaves(sched_grads):
    np.testing.assert_array_equal(leaf, 0.0)


def test_log_prob_is_the_normalised_log_softmax_and_drives_guidance():
  clf = nets.NoisyClassifier(num_classes=4, ch=8, ch_mult=(1, 2))
  z = jax.random.normal(jax.random.key(7), (3, 8, 8, 1))
  gamma = jnp.array([-5.0, 0.0, 3.0])
  params = clf.init(jax.random.key(8), z, gamma)
  logits = jax.jit(clf.apply)(params, z, gamma)
  assert logits.shape == (3, 4) and logits.dtype == jnp.float32
  log_prob = jax.jit(lambda y: clf.apply(params, z, gamma, y, method=clf.log_prob))
  all_labels = [log_prob(jnp.full((3,), k)) for k in range(4)]
  np.testing.assert_allclose(jax.nn.logsumexp(jnp.stack(all_labels), axis=0), 0.0, atol=1e-5)
  guided = sampling.classifier_guidance(
      lambda z, g: jnp.zeros_like(z),
      lambda z, g, y: clf.apply(params, z, g, y, method=clf.log_prob), jnp.array([0, 1, 2]),
      2.0, num_classes=4)
  assert jax.jit(guided)(z, gamma).shape == z.shape


@pytest.mark.parametrize("kwargs,message", [
    (dict(num_classes=1), "num_classes must be an int >= 2"),
    (dict(num_classes=3, gamma_low=5.0, gamma_high=-5.0), "must be below"),
])
def test_bad_settings_are_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    nets.NoisyClassifier(**kwargs)


def test_bad_labels_are_refused():
  const = lambda z, g: jnp.zeros((z.shape[0], 3))
  with pytest.raises(ValueError, match=r"labels must be int \[B\] = \(2,\)"):
    losses.noisy_classifier_loss(const, gamma_fn, jnp.zeros((2, 4, 4, 1), jnp.int32),
                                 jnp.array([0, 1, 2]), jax.random.key(0))
