"""The optimizer: weight-decay mask, learning-rate schedule, clipping, EMA decay."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from helpers_train import tiny_config
from vdm_jax import config as config_lib
from vdm_jax import model as model_lib
from vdm_jax import training
from vdm_jax.config import OptimizerSpec


def spec(**overrides) -> OptimizerSpec:
  values = dict(lr=1e-3, warmup_steps=0, decay="none", weight_decay=0.0, ema_rate=0.9,
                grad_clip=0.0, b1=0.9, b2=0.99, eps=1e-8)
  return OptimizerSpec(**{**values, **overrides})


def test_weight_decay_mask_spares_biases_norms_and_schedule():
  model = config_lib.resolve(tiny_config(**{"model.schedule": "learned_linear"})).model.build()
  params = jax.eval_shape(lambda: model_lib.init_variables(model, jax.random.PRNGKey(0)))
  mask = training.decay_mask(params["params"])
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  scope = model_lib.SCHEDULE_SCOPE
  assert flat[f"['{scope}']['endpoints']['gamma_min']"] is False
  assert flat[f"['{scope}']['endpoints']['log_range']"] is False
  decayed = [k for k, v in flat.items() if v]
  spared = [k for k, v in flat.items() if not v]
  assert decayed and all(k.endswith("['kernel']") for k in decayed)
  assert all(k.endswith(("['bias']", "['scale']")) or scope in k for k in spared)
  assert any(k.endswith("['scale']") for k in spared)
  assert any(k.endswith("['bias']") for k in spared)


def test_weight_decay_applies_only_where_masked():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            model_lib.SCHEDULE_SCOPE: {"w": {"kernel": jnp.ones((2, 2))}}}
  opt = training.make_optimizer(spec(lr=0.1, weight_decay=0.5), 10)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, opt.init(params), params)
  np.testing.assert_allclose(updates["dense"]["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)
  np.testing.assert_array_equal(updates[model_lib.SCHEDULE_SCOPE]["w"]["kernel"], 0.0)


def test_all_but_biases_mask_is_the_official_one():
  """weight_decay_mask='all_but_biases' (the official VDM mask): every leaf but the biases
  decays, norm scales and the schedule's parameters included."""
  model = config_lib.resolve(tiny_config(**{"model.schedule": "learned_linear"})).model.build()
  params = jax.eval_shape(lambda: model_lib.init_variables(model, jax.random.PRNGKey(0)))
  mask = training.decay_mask(params["params"], "all_but_biases")
  flat = {jax.tree_util.keystr(p): v for p, v in jax.tree_util.tree_leaves_with_path(mask)}
  scope = model_lib.SCHEDULE_SCOPE
  assert flat[f"['{scope}']['endpoints']['gamma_min']"] is True
  assert flat[f"['{scope}']['endpoints']['log_range']"] is True
  assert all(v is (not k.endswith("['bias']")) for k, v in flat.items())
  assert any(k.endswith("['scale']") for k, v in flat.items() if v)
  with pytest.raises(ValueError, match=r"weight decay mask must be one of \('kernels', "
                     r"'all_but_biases'\), got 'everything'"):
    training.decay_mask(params["params"], "everything")


def test_all_but_biases_decays_the_schedule():
  params = {"dense": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
            model_lib.SCHEDULE_SCOPE: {"w": {"kernel": jnp.ones((2, 2))}},
            "norm": {"scale": jnp.ones((2,))}}
  opt = training.make_optimizer(spec(lr=0.1, weight_decay=0.5,
                                     weight_decay_mask="all_but_biases"), 10)
  zero = jax.tree_util.tree_map(jnp.zeros_like, params)
  updates, _ = opt.update(zero, opt.init(params), params)
  for leaf in (updates["dense"]["kernel"], updates[model_lib.SCHEDULE_SCOPE]["w"]["kernel"],
               updates["norm"]["scale"]):
    np.testing.assert_allclose(leaf, -0.1 * 0.5, rtol=1e-6)
  np.testing.assert_array_equal(updates["dense"]["bias"], 0.0)


def test_learning_rate_warmup_and_decay():
  for decay, end in (("none", 1e-3), ("linear", 0.0), ("cosine", 0.0)):
    lr = training.learning_rate_schedule(spec(warmup_steps=10, decay=decay), 110)
    np.testing.assert_allclose(float(lr(0)), 1e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(4)), 5e-4, rtol=1e-5)
    np.testing.assert_allclose(float(lr(9)), 1e-3, rtol=1e-5)
    np.testing.assert_allclose(float(lr(110)), end, atol=1e-12)
  cos = training.learning_rate_schedule(spec(warmup_steps=10, decay="cosine"), 110)
  lin = training.learning_rate_schedule(spec(warmup_steps=10, decay="linear"), 110)
  np.testing.assert_allclose(float(cos(60)), 5e-4, rtol=1e-5)
  np.testing.assert_allclose(float(lin(35)), 7.5e-4, rtol=1e-5)
  one = training.learning_rate_schedule(spec(warmup_steps=1), 10)
  np.testing.assert_allclose([float(one(0)), float(one(5))], [1e-3, 1e-3], rtol=1e-6)


def test_the_state_records_the_rate_of_each_update():
  s = spec(warmup_steps=4, decay="cosine")
  opt, lr = training.make_optimizer(s, 20), training.learning_rate_schedule(s, 20)
  params = {"kernel": jnp.ones((3,))}
  state = opt.init(params)
  for step in range(6):
    _, state = opt.update({"kernel": jnp.ones((3,))}, state, params)
    np.testing.assert_allclose(float(training.learning_rate(state)), float(lr(step)), rtol=1e-6)


def test_gradient_clipping_by_global_norm_and_the_same_state_either_way():
  params = {"kernel": jnp.zeros((4,))}
  grads = {"kernel": jnp.full((4,), 10.0)}     # global norm 20
  structures = []
  for clip, expected_norm in ((1.0, 1.0), (0.0, 20.0)):
    opt = training.make_optimizer(spec(lr=1.0, grad_clip=clip), 10)
    _, state = opt.update(grads, opt.init(params), params)
    # Adam's first moment after one step is (1 - b1) times the (clipped) gradient.
    mu = optax.tree.get(state, "mu")
    np.testing.assert_allclose(float(jnp.linalg.norm(mu["kernel"])), 0.1 * expected_norm,
                               rtol=1e-5)
    structures.append(jax.tree_util.tree_structure(state))
  # Turning clipping on or off keeps the optimizer state's structure (checkpoints stay usable).
  assert structures[0] == structures[1]


def test_equal_settings_give_the_same_optimizer_object():
  assert training.make_optimizer(spec(), 10) is training.make_optimizer(spec(), 99)
  assert training.make_optimizer(spec(decay="cosine"), 10) is not \
      training.make_optimizer(spec(decay="cosine"), 99)


def test_ema_decay_warms_up_to_the_rate():
  np.testing.assert_allclose(float(training.ema_decay(0.999, 0)), 0.1, rtol=1e-6)
  np.testing.assert_allclose(float(training.ema_decay(0.999, 10**6)), 0.999, rtol=1e-6)


@pytest.mark.parametrize("decay", ["none", "linear", "cosine"])
def test_schedule_values_are_float32_scalars(decay):
  lr = training.learning_rate_schedule(spec(warmup_steps=3, decay=decay), 10)
  value = jnp.asarray(lr(jnp.int32(5)))
  assert value.shape == () and value.dtype == jnp.float32
