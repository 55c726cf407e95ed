"""Encoding, the discrete decoder, the prior KL and units."""
import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import diffusion, likelihood, schedules


def test_encode_decode_roundtrip():
  x = jnp.arange(256, dtype=jnp.uint8)
  enc = likelihood.encode(x, 256)
  np.testing.assert_allclose(enc[jnp.array([0, 255])], [-1 + 1 / 256, 1 - 1 / 256], rtol=1e-6)
  np.testing.assert_array_equal(likelihood.decode(enc, 256), np.arange(256))


@pytest.mark.parametrize("channels", [1, 3])
def test_decoder_normalised_and_sharp_at_low_gamma(channels):
  key = jax.random.PRNGKey(channels)
  x_int = jax.random.randint(key, (4, 5, 5, channels), 0, 256)
  x = likelihood.encode(x_int, 256)
  gamma_0 = schedules.GAMMA_MIN
  z_0, _ = diffusion.sample_marginal(jax.random.PRNGKey(7), x, gamma_0)
  logp = likelihood.decoder_log_probs(z_0, gamma_0, 256)
  chex.assert_shape(logp, (4, 5, 5, channels, 256))
  np.testing.assert_allclose(jnp.exp(logp).sum(-1), 1.0, rtol=1e-5)
  p_true = jnp.exp(jnp.take_along_axis(logp, x_int[..., None], -1))[..., 0]
  assert float(p_true.mean()) > 0.99   # the expected probability of the true value
  # recon_loss is minus the sum of those log-probabilities.
  np.testing.assert_allclose(likelihood.recon_loss(x_int, z_0, gamma_0, 256),
                             -jnp.log(p_true).sum((1, 2, 3)), rtol=1e-5, atol=1e-6)


def test_decoder_expected_true_probability_closed_form():
  """With sigma_0/alpha_0 = exp(gamma_0/2), P(z0r nearest to the true bin) has a closed form."""
  gamma_0 = schedules.GAMMA_MIN
  x_int = jnp.full((1, 200_000), 100, jnp.int32)
  x = likelihood.encode(x_int, 256)
  z_0, _ = diffusion.sample_marginal(jax.random.PRNGKey(0), x, gamma_0)
  p = jnp.exp(-likelihood.recon_loss(x_int[:, :1], z_0[:, :1], gamma_0, 256))
  chex.assert_shape(p, (1,))
  argmax_correct = jnp.mean(jnp.argmax(likelihood.decoder_logits(z_0, gamma_0, 256), -1) == 100)
  std = math.exp(gamma_0 / 2)
  half_bin = 1 / 256
  expected = math.erf(half_bin / (std * math.sqrt(2)))
  se = math.sqrt(expected * (1 - expected) / x_int.size)
  assert abs(float(argmax_correct) - expected) < 4 * se + 1e-6
  assert expected > 0.99


def test_prior_kl_closed_form():
  x = jnp.linspace(-0.9, 0.9, 6).reshape(2, 3)
  for g in [-5.0, 0.0, 5.0, 12.0]:
    a2, s2 = 1 / (1 + np.exp(g)), 1 / (1 + np.exp(-g))
    ref = 0.5 * np.sum(a2 * np.asarray(x) ** 2 + s2 - np.log(s2) - 1, axis=1)
    np.testing.assert_allclose(likelihood.prior_kl(x, g), ref, rtol=1e-5, atol=1e-7)
    # It is the Gaussian KL from diffusion.py, summed.
    mean, var = diffusion.marginal(x, g)
    np.testing.assert_allclose(likelihood.prior_kl(x, g),
                               diffusion.gaussian_kl(mean, var, 0.0, 1.0).sum(1),
                               rtol=1e-4, atol=1e-6)


class TransformationsTest(chex.TestCase):
  """recon_loss and prior_kl give the same numbers eagerly, under jit and under pmap (8 devices)."""

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_recon_loss(self):
    x_int = jax.random.randint(jax.random.PRNGKey(0), (3, 2, 2, 1), 0, 16)
    gamma_0 = jnp.array([schedules.GAMMA_MIN, -6.0, -2.0])
    z_0, _ = diffusion.sample_marginal(jax.random.PRNGKey(1), likelihood.encode(x_int, 16),
                                       gamma_0)
    recon = functools.partial(likelihood.recon_loss, vocab_size=16)
    got = self.variant(recon)(x_int, z_0, gamma_0)
    chex.assert_shape(got, (3,))
    # At gamma_min the loss is ~0 nats, the difference of two near-equal float32 log-sum-exps:
    # absolute error ~1e-6 nats, depending on how XLA fuses them.
    chex.assert_trees_all_close(got, recon(x_int, z_0, gamma_0), rtol=1e-6, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True, with_pmap=True)
  def test_prior_kl(self):
    x = jnp.linspace(-0.9, 0.9, 12).reshape(3, 2, 2, 1)
    gamma_1 = jnp.array([-1.0, schedules.GAMMA_MAX, 12.0])
    got = self.variant(likelihood.prior_kl)(x, gamma_1)
    chex.assert_shape(got, (3,))
    chex.assert_trees_all_close(got, likelihood.prior_kl(x, gamma_1), rtol=1e-6, atol=1e-9)


def test_nats_to_bpd():
  assert float(likelihood.nats_to_bpd(784 * math.log(256), 784)) == pytest.approx(8.0)


def test_input_errors():
  with pytest.raises(TypeError, match="integers"):
    likelihood.check_inputs(jnp.zeros((2, 3), jnp.float32), 256)
  with pytest.raises(ValueError, match="shape \\[batch, ...\\]"):
    likelihood.check_inputs(jnp.zeros((3,), jnp.int32), 256)
  with pytest.raises(ValueError, match="vocab_size must be an int >= 2"):
    likelihood.check_inputs(jnp.zeros((2, 3), jnp.int32), 1)
  with pytest.raises(ValueError, match=r"\[0, 256\), found min 0 and max 300"):
    likelihood.check_range(np.array([[0, 300]]), 256)
  likelihood.check_range(np.array([[0, 255]], np.uint8), 256)


def test_check_inputs_checks_values_only_when_concrete():
  x = jnp.array([[0, 3], [2, 1]], jnp.int32)
  likelihood.check_inputs(x, 4)
  with pytest.raises(ValueError, match=r"\[0, 4\), found min 0 and max 4\. Quantise"):
    likelihood.check_inputs(x.at[1, 0].set(4), 4)
  jax.jit(lambda x: likelihood.check_inputs(x, 4) or x)(x.at[1, 0].set(4))   # traced: unchecked
