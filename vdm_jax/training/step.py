"""The jit-compiled, data-parallel train step (update + EMA + metrics) of any objective.

Each step's random key is `fold_in(state.rng, state.step)`, so the numbers depend neither on the
device count, nor on how many steps run per call, nor on where a run was resumed.
"""
from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from vdm_jax import parallel
from vdm_jax.training import objectives
from vdm_jax.training import optimizer as optimizer_lib
from vdm_jax.training.state import TrainState

Array = jax.Array


# `training.loss_fn`: the diffusion model's objective and metrics for one batch.
loss_fn = objectives.diffusion_loss_fn


def _all_finite(tree) -> Array:
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree_util.tree_leaves(tree)]))


def make_train_step(model, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, *, ema_rate: float,
                    unroll: bool | None = None) -> Callable:
  """The jit-compiled, data-parallel train step.

  Returns `step_fn(state, batches) -> (state, metrics)`: `batches` is a dict of arrays stacked
  over steps, [S, B, ...] with the global batch B (split over 'data' on axis 1); it runs S
  optimizer steps of `objectives.of(model)`. `metrics` holds [S] arrays per key: the
  objective's metrics and 'train/grad_norm' (before clipping), 'train/lr' (from the optimizer
  state), 'train/finite' (loss, gradients and new parameters all finite) and, for a model with
  a noise schedule, 'train/gamma_min', 'train/gamma_max'.
  `state` is donated.

  unroll: run the S steps as S unrolled copies instead of `lax.scan` (compile time grows with
  S). Default: unrolled on CPU, scanned elsewhere.
  """
  objective_fn = objectives.of(model).loss_fn
  grad_fn = jax.value_and_grad(functools.partial(objective_fn, model, train=True), has_aux=True)

  def one_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (objective, metrics), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = optimizer_lib.ema_decay(ema_rate, state.step)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                 state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    metrics = dict(metrics)
    metrics.update({
        "train/grad_norm": grad_norm,
        "train/lr": optimizer_lib.learning_rate(opt_state),
        "train/finite": (jnp.isfinite(objective) & jnp.isfinite(grad_norm)
                         & _all_finite(params)),
    })
    if hasattr(model, "gamma"):   # a model with a noise schedule (not the autoencoder)
      gammas = model.apply({"params": params}, jnp.array([0.0, 1.0], jnp.float32),
                           method=model.gamma)
      metrics.update({"train/gamma_min": gammas[0], "train/gamma_max": gammas[1]})
    return state.replace(step=state.step + 1, params=params, ema_params=ema,
                         opt_state=opt_state), metrics

  if unroll is None:
    unroll = mesh.devices.flat[0].platform == "cpu"

  def multi_step(state, batches):
    if not unroll:
      return jax.lax.scan(one_step, state, batches)
    # XLA:CPU runs the backward pass of convolutions inside a while loop (what lax.scan lowers
    # to) about 25x slower than outside one; there the steps are unrolled instead.
    per_step = []
    for i in range(jax.tree_util.tree_leaves(batches)[0].shape[0]):
      state, metrics = one_step(state, jax.tree_util.tree_map(lambda x: x[i], batches))
      per_step.append(metrics)
    return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_step)

  repl = parallel.replicated(mesh)
  return jax.jit(multi_step, in_shardings=(repl, parallel.data_sharding(mesh, 1)),
                 out_shardings=(repl, repl), donate_argnums=(0,))


compiled_train_step = functools.lru_cache(maxsize=8)(make_train_step)
compiled_train_step.__doc__ = ("`make_train_step`, memoised on its (hashable) arguments: "
                               "another run in the same process reuses the compiled step.")
