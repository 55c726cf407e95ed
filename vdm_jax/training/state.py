"""The train state, the one function that builds it, and its restoring from a run's checkpoint.

`init_state` is the only place the seed becomes parameters and the per-step key: the real state
(`create_state`, compiled and replicated over the mesh) and the abstract state that a checkpoint
is restored onto (`abstract_state`, shapes and shardings only) both come from it, so they cannot
disagree.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from vdm_jax import checkpoint as checkpoint_lib
from vdm_jax import model as model_lib
from vdm_jax import parallel
from vdm_jax.config import RunSpec
from vdm_jax.training import optimizer as optimizer_lib

PyTree = Any


@flax.struct.dataclass
class TrainState:
  """Everything training needs to continue exactly: saved whole in each checkpoint.

  step: int32 scalar, optimizer steps done. params / ema_params: the model's 'params' collection
  and its exponential moving average. opt_state: optax state. rng: uint32[2] base key; step i
  uses `fold_in(rng, i)`.
  """
  step: jax.Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: jax.Array


def init_state(model: model_lib.VDM, optimizer: optax.GradientTransformation,
               seed_key: jax.Array) -> TrainState:
  """A fresh state from `seed_key` (= PRNGKey(seed)): parameters from its first half, the base
  key of the training steps from its second; EMA equal to the parameters."""
  key_init, key_train = jax.random.split(seed_key)
  params = model_lib.init_variables(model, key_init)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=key_train)


@functools.lru_cache(maxsize=8)
def _compiled_init(model, optimizer, mesh):
  return jax.jit(functools.partial(init_state, model, optimizer),
                 out_shardings=parallel.replicated(mesh))


def create_state(model: model_lib.VDM, optimizer: optax.GradientTransformation, seed: int,
                 mesh: jax.sharding.Mesh) -> TrainState:
  """`init_state(model, optimizer, PRNGKey(seed))`, compiled once per (model, optimizer, mesh),
  every leaf replicated over the mesh."""
  return _compiled_init(model, optimizer, mesh)(jax.random.PRNGKey(int(seed)))


def abstract_state(model: model_lib.VDM, optimizer: optax.GradientTransformation,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """The state's shapes, dtypes and (replicated) shardings, without computing it: the target a
  checkpoint is restored onto."""
  shapes = jax.eval_shape(functools.partial(init_state, model, optimizer),
                          jax.random.PRNGKey(0))
  repl = parallel.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def restore_state(spec: RunSpec, workdir: str | Path, step: int | None = None,
                  mesh: jax.sharding.Mesh | None = None):
  """(model, train state, step) from the latest (or `step`) checkpoint in
  `<workdir>/checkpoints`; the EMA parameters are `state.ema_params`."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  model = spec.model.build()
  optimizer = optimizer_lib.make_optimizer(spec.optimizer, spec.training.num_steps)
  directory = Path(workdir) / "checkpoints"
  ckpt = checkpoint_lib.Checkpointer(directory, max_to_keep=None)
  try:
    # Nothing is moved here: a damaged step is skipped (warning), never set aside.
    restored = ckpt.restore(abstract_state(model, optimizer, mesh), step=step,
                            set_aside=False)
    if restored is None:
      raise FileNotFoundError(
          f"No checkpoint in {directory}: train first (--mode=train with this --workdir), or "
          "point --workdir at a folder holding checkpoints/.")
    state, _ = restored
  finally:
    ckpt.close()
  return model, state, int(state.step)
