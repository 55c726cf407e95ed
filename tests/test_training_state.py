"""The train state: one function builds the real state and the abstract one."""
import jax
import numpy as np

from helpers_train import tiny_config
from vdm_jax import config as config_lib
from vdm_jax import model as model_lib
from vdm_jax import parallel, training


def test_create_and_abstract_state_come_from_init_state():
  spec = config_lib.resolve(tiny_config())
  model = spec.model.build()
  optimizer = training.make_optimizer(spec.optimizer, 2)
  mesh = parallel.make_mesh()
  state = training.create_state(model, optimizer, 3, mesh)
  eager = training.init_state(model, optimizer, jax.random.PRNGKey(3))
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b),
                                                                 rtol=1e-6, atol=1e-7),
                         state, eager)
  # The seed: parameters from the first half of PRNGKey(seed), the step key is the second.
  key_init, key_train = jax.random.split(jax.random.PRNGKey(3))
  np.testing.assert_array_equal(np.asarray(state.rng), np.asarray(key_train))
  params = model_lib.init_variables(model, key_init)["params"]
  jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7),
                         state.params, params)
  jax.tree_util.tree_map(np.testing.assert_array_equal, state.ema_params, state.params)
  assert int(state.step) == 0

  abstract = training.abstract_state(model, optimizer, mesh)
  assert jax.tree_util.tree_structure(abstract) == jax.tree_util.tree_structure(state)
  for a, s in zip(jax.tree_util.tree_leaves(abstract), jax.tree_util.tree_leaves(state)):
    assert (a.shape, a.dtype) == (s.shape, s.dtype)
    assert a.sharding == s.sharding == parallel.replicated(mesh)
