"""Classifier guidance against closed forms, on the three-point data of helpers_mixture.

Point 0 is class 0, points 1 and 2 are class 1. The exact classifier of noisy inputs is
p(y | z_t) = sum_{k in y} p(k | z_t) (`point_masses.posterior`), and the exact class-conditional
denoiser is `optimal_eps_fn` with the class's points at their renormalised probabilities. Since
eps = -sigma_t grad log p(z_t), classifier guidance at scale 1 must equal that conditional
denoiser pointwise, and its samples follow the class-conditional distribution.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_mixture import EPS_FN, LOG_PROBS, POINTS, POINTS_INT, PROBS, SHAPE, V
from vdm_jax import point_masses, sampling, schedules

CLASS_OF_POINT = np.array([0, 1, 1])
LINEAR = schedules.FixedLinear(schedules.GAMMA_MIN, schedules.GAMMA_MAX)


def gamma_fn(t):
  return LINEAR.apply({}, t)


def log_prob_fn(z, gamma_t, labels):
  """log p(labels | z_t) of the exact classifier, [B] nats: Bayes' rule over the points in
  log space (the posterior's logits), summed over the points of the class."""
  g = gamma_t[:, None]
  sq = jnp.sum(jnp.square(z[:, None] - schedules.alpha(g)[..., None, None, None] * POINTS[None]),
               axis=(2, 3, 4))                                                # [B, 3]
  logits = LOG_PROBS[None] - 0.5 * sq / schedules.sigma_sq(g)
  in_class = jnp.asarray(CLASS_OF_POINT)[None, :] == labels[:, None]          # [B, 3]
  return (jax.nn.logsumexp(jnp.where(in_class, logits, -jnp.inf), axis=-1)
          - jax.nn.logsumexp(logits, axis=-1))


def class_log_probs(c):
  """Log-probabilities of the points given class c (renormalised within the class)."""
  p = np.where(CLASS_OF_POINT == c, PROBS, 0.0)
  return jnp.log(jnp.asarray(p / p.sum(), jnp.float32))


def conditional_eps(z, gamma_t, labels):
  outs = jnp.stack([point_masses.optimal_eps_fn(POINTS, class_log_probs(c))(z, gamma_t)
                    for c in (0, 1)])
  return jnp.where(labels[:, None, None, None] == 1, outs[1], outs[0])


def which_point(x):
  x = np.asarray(x).reshape(x.shape[0], 1, -1)
  eq = (x == np.asarray(POINTS_INT).reshape(1, 3, -1)).all(-1)
  return np.where(eq.any(1), eq.argmax(1), -1)


def test_scale_one_with_the_exact_classifier_is_the_conditional_denoiser():
  key = jax.random.key(0)
  labels = jnp.arange(64, dtype=jnp.int32) % 2
  gamma = jnp.linspace(-10.0, 4.0, 64)
  z = jax.random.normal(key, (64, *SHAPE))
  guided = sampling.classifier_guidance(EPS_FN, log_prob_fn, labels, 1.0, num_classes=2)
  np.testing.assert_allclose(guided(z, gamma), conditional_eps(z, gamma, labels), atol=2e-4)
  # Under jit with a traced scale: the same numbers.
  traced = jax.jit(lambda s, z, g: sampling.classifier_guidance(
      EPS_FN, log_prob_fn, labels, s)(z, g))(1.0, z, gamma)
  np.testing.assert_allclose(traced, guided(z, gamma), rtol=1e-5, atol=1e-5)
  # Scale 0 is the unguided function itself.
  assert sampling.classifier_guidance(EPS_FN, log_prob_fn, labels, 0) is EPS_FN


def test_it_composes_with_classifier_free_guidance():
  """eps_c - eps_u = -sigma grad log p(y | z) for exact models, so classifier-free weight w
  plus classifier scale s is eps_c + (w + s) (eps_c - eps_u)."""
  labels = jnp.arange(32, dtype=jnp.int32) % 2
  z = jax.random.normal(jax.random.key(1), (32, *SHAPE))
  gamma = jnp.linspace(-8.0, 3.0, 32)

  def cond_or_null(z, g, lab):   # label 2 is the null label: the unconditional model
    return jnp.where(lab[:, None, None, None] == 2, EPS_FN(z, g), conditional_eps(z, g, lab))

  both = sampling.classifier_guidance(sampling.guided_eps_fn(cond_or_null, labels, 2, 0.5),
                                      log_prob_fn, labels, 1.5)
  eps_c, eps_u = conditional_eps(z, gamma, labels), EPS_FN(z, gamma)
  np.testing.assert_allclose(both(z, gamma), eps_c + 2.0 * (eps_c - eps_u), atol=5e-4)


@pytest.mark.parametrize("sampler,T", [("ancestral", 200), ("dpmpp_2m", 20)])
def test_guided_samples_follow_the_class_conditional_distribution(sampler, T):
  n = 600
  labels = jnp.arange(n, dtype=jnp.int32) % 2
  results = {}
  for scale in (0.0, 1.0, 4.0):
    eps_fn = sampling.classifier_guidance(EPS_FN, log_prob_fn, labels, scale, num_classes=2)
    x = sampling.sample(eps_fn, gamma_fn, jax.random.key(2), (n, *SHAPE), T=T, vocab_size=V,
                        sampler=sampler)
    idx = which_point(x)
    assert np.all(idx >= 0), (scale, np.mean(idx < 0))
    results[scale] = idx
  lab = np.asarray(labels)
  m = n // 2
  # Scale 0: the unconditional distribution whatever the label (5-sigma binomial bounds).
  freq = np.bincount(results[0.0], minlength=3) / n
  assert np.all(np.abs(freq - PROBS) < 5 * np.sqrt(PROBS * (1 - PROBS) / n)), freq
  # Scale 1: every sample on a point of its class, class 1 split 0.6 / 0.4 between its points.
  assert np.all(CLASS_OF_POINT[results[1.0]] == lab)
  share = np.mean(results[1.0][lab == 1] == 1)
  assert abs(share - 0.6) < 5 * np.sqrt(0.24 / m), share
  # Scale 4: class 1 concentrates on point 1, the one far from class 0's point (the classifier
  # is surest there).
  assert np.all(CLASS_OF_POINT[results[4.0]] == lab)
  assert np.mean(results[4.0][lab == 1] == 1) > 0.6 + 5 * np.sqrt(0.24 / m)


@pytest.mark.parametrize("labels,scale,message", [
    (jnp.array([0, 2]), 1.0, r"labels must lie in \[0, 2\)"),
    (jnp.array([[0], [1]]), 1.0, r"labels must be int \[B\]"),
    (jnp.array([0.0, 1.0]), 1.0, r"labels must be int \[B\]"),
    (jnp.array([0, 1]), -1.0, "scale must be a finite number >= 0"),
    (jnp.array([0, 1]), float("nan"), "scale must be a finite number >= 0"),
])
def test_bad_input_is_refused_before_any_compute(labels, scale, message):
  with pytest.raises(ValueError, match=message):
    sampling.classifier_guidance(EPS_FN, log_prob_fn, labels, scale, num_classes=2)


def test_a_label_count_other_than_the_batch_is_refused_when_traced():
  guided = sampling.classifier_guidance(EPS_FN, log_prob_fn, jnp.array([0, 1, 0]), 1.0)
  with pytest.raises(ValueError, match="3 labels for a batch of 2"):
    jax.eval_shape(guided, jnp.zeros((2, *SHAPE)), jnp.zeros((2,)))
