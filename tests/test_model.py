"""The VDM module: configuration, validation, the loss through a real network, bf16, labels."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import cifar10_paper
from vdm_jax import config as config_lib, likelihood
from vdm_jax import model as vdm_model, nets

TINY_UNET = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.1)
RNGS = {"sample": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}


def _model(dtype=None, num_classes=0, **attrs) -> vdm_model.VDM:
  """A VDM over 8x8x1 images with a tiny U-Net (compute dtype `dtype`)."""
  net_kwargs = dict(TINY_UNET, num_classes=num_classes)
  if dtype is not None:
    net_kwargs["dtype"] = jnp.dtype(dtype)
  attrs = dict(dict(image_shape=(8, 8, 1), schedule="learned_linear"), **attrs)
  return vdm_model.VDM(network=nets.UNet(**net_kwargs), num_classes=num_classes, **attrs)


def _apply(m, **kwargs):
  """`m.apply(variables, *args, **kwargs)` compiled once: a U-Net run op by op compiles each
  operation on its own, several times slower on CPU."""
  return jax.jit(functools.partial(m.apply, **kwargs))


def _perturbed(variables, scale=0.05, seed=0):
  """Makes zero-initialised layers non-zero so outputs depend on every parameter."""
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [l + scale * jax.random.normal(k, l.shape) for l, k in zip(leaves, keys)])


def test_loss_through_unet_is_finite_per_example_and_matches_objective():
  m = _model()
  variables = vdm_model.init_variables(m, jax.random.PRNGKey(0))
  x = jax.random.randint(jax.random.PRNGKey(3), (4, 8, 8, 1), 0, 256).astype(jnp.uint8)
  loss = _apply(m, train=True, rngs=RNGS)(variables, x)
  for term in loss:
    assert term.shape == (4,) and np.all(np.isfinite(term))
  obj, bound = _apply(m, train=True, rngs=RNGS, method=m.objective)(variables, x)
  np.testing.assert_array_equal(obj, bound.total)
  np.testing.assert_array_equal(bound.total, loss.total)


def test_zero_initialised_unet_gives_closed_form_loss():
  """At init the UNet outputs eps_hat = 0 exactly, so E[L_diff] = 0.5 D (gamma_max - gamma_min)."""
  m = _model(schedule="fixed_linear")
  variables = vdm_model.init_variables(m, jax.random.PRNGKey(0))
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  np.testing.assert_array_equal(_apply(m, method=m.eps)(variables, z, jnp.zeros(3)), 0.0)
  x = jnp.zeros((256, 8, 8, 1), jnp.uint8)
  loss = _apply(m, rngs=RNGS)(variables, x)
  expected, se = 0.5 * 64 * 18.3, float(loss.diffusion.std()) / 16
  assert abs(float(loss.diffusion.mean()) - expected) < 4 * se


def test_class_labels_change_the_output_and_null_label_is_accepted():
  m = _model(num_classes=3)
  variables = _perturbed(vdm_model.init_variables(m, jax.random.PRNGKey(0)))
  z = jax.random.normal(jax.random.PRNGKey(1), (2, 8, 8, 1))
  g = jnp.array([-2.0, 1.0])
  eps = _apply(m, method=m.eps)
  out = [eps(variables, z, g, jnp.array([c, c])) for c in range(3)]
  out_null = eps(variables, z, g, None)
  np.testing.assert_array_equal(out_null, eps(variables, z, g, jnp.array([3, 3])))
  for a, b in [(out[0], out[1]), (out[1], out[2]), (out[0], out_null)]:
    assert float(jnp.max(jnp.abs(a - b))) > 1e-4


def test_bf16_compute_close_to_float32():
  x = jax.random.randint(jax.random.PRNGKey(3), (8, 8, 8, 1), 0, 256)
  m32 = _model()
  m16 = _model(dtype="bfloat16")
  variables = _perturbed(vdm_model.init_variables(m32, jax.random.PRNGKey(0)))
  l32 = _apply(m32, rngs=RNGS)(variables, x)
  l16 = _apply(m16, rngs=RNGS)(variables, x)
  # The loss math is float32 in both; only the network runs in bf16 (8 mantissa bits).
  np.testing.assert_allclose(l16.recon, l32.recon, rtol=1e-6)
  np.testing.assert_allclose(l16.prior, l32.prior, rtol=1e-6)
  rel = float(jnp.abs(l16.total.mean() - l32.total.mean()) / l32.total.mean())
  assert rel < 2e-2, rel


def test_paper_cifar10_network_by_config_alone():
  m = config_lib.resolve(cifar10_paper.get_config(), num_devices=1).model.build()
  shapes = jax.eval_shape(lambda k: vdm_model.init_variables(m, k), jax.random.PRNGKey(0))
  n = vdm_model.param_count(shapes)
  # 32 down + 33 up residual blocks of 128 channels: ~32M parameters (the paper's model).
  assert 30e6 < n < 34e6, n
  assert shapes["params"]["network"]["down"]["block"]["conv1"]["kernel"].shape[0] == 32


@pytest.mark.parametrize("overrides,error,match", [
    (dict(gamma_min=5.0, gamma_max=-13.3), ValueError, "gamma_min .* must be < gamma_max"),
    (dict(schedule="quadratic"), ValueError, "Unknown schedule 'quadratic'"),
    (dict(image_shape=(8, 0)), ValueError, "image_shape must be a tuple of positive ints"),
    (dict(data=likelihood.Discrete(16), vocab_size=8), ValueError, "pass one of them"),
    (dict(vocab_size=1), ValueError, "vocab_size must be an int >= 2"),
    (dict(T=-3), ValueError, "T must be an int >= 0"),
    (dict(weighting="l2"), ValueError, "Unknown weighting 'l2'"),
    (dict(weighting="sigmoid", schedule_objective="variance"), ValueError,
     "needs weighting='elbo'"),
])
def test_settings_errors(overrides, error, match):
  with pytest.raises(error, match=match):
    _model(**overrides)


def test_input_errors_say_what_to_change():
  m = _model()
  variables = vdm_model.init_variables(m, jax.random.PRNGKey(0))
  with pytest.raises(ValueError, match="set config.model.image_shape to \\(28, 28, 1\\)"):
    m.apply(variables, jnp.zeros((2, 28, 28, 1), jnp.uint8), rngs=RNGS)
  with pytest.raises(TypeError, match="Discrete\\(vocab_size=256, low=-1.0, high=1.0\\) takes "
                     "integers in \\[0, 256\\).*but images has dtype float32.*Continuous"):
    m.apply(variables, jnp.zeros((2, 8, 8, 1), jnp.float32), rngs=RNGS)
  with pytest.raises(ValueError, match="images: data values must lie in \\[0, 256\\), found "
                     "min 256 and max 256"):
    m.apply(variables, jnp.full((2, 8, 8, 1), 256, jnp.int32), rngs=RNGS)
  with pytest.raises(ValueError, match="num_classes=2 but its network has num_classes=0"):
    vdm_model.VDM(network=nets.UNet(**TINY_UNET), image_shape=(8, 8, 1), num_classes=2)


def test_label_dropout_replaces_labels_with_null_only_when_training():
  m = _model(num_classes=3, label_dropout=0.5)
  variables = _perturbed(vdm_model.init_variables(m, jax.random.PRNGKey(0)))
  x = jax.random.randint(jax.random.PRNGKey(3), (64, 8, 8, 1), 0, 256)
  labels = jnp.zeros((64,), jnp.int32)
  m_nodrop = m.clone(label_dropout=0.0)
  # Not training: labels are used as given.
  np.testing.assert_array_equal(_apply(m, rngs=RNGS)(variables, x, labels).total,
                                _apply(m_nodrop, rngs=RNGS)(variables, x, labels).total)
  # Training: each example matches either a null-label pass or a given-label pass, about half each.
  m_det = m.clone(network=m.network.clone(dropout=0.0))
  got = _apply(m_det, train=True, rngs=RNGS)(variables, x, labels).total
  no_drop = _apply(m_det.clone(label_dropout=0.0), train=True, rngs=RNGS)
  as_null = no_drop(variables, x, jnp.full((64,), 3)).total
  as_given = no_drop(variables, x, labels).total
  is_null = np.isclose(got, as_null, rtol=1e-6)
  is_given = np.isclose(got, as_given, rtol=1e-6)
  assert np.all(is_null ^ is_given)
  assert 16 < int(is_null.sum()) < 48
