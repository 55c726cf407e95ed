"""The optimizer: global-norm clipping, then AdamW on a warm-up + decay schedule; and the EMA.

    optimizer = make_optimizer(spec.optimizer, num_steps)    # optax.GradientTransformation
    lr = learning_rate(opt_state)                            # the rate the last update used

Weight decay applies to kernels and embeddings only: not to biases, norm scales, or the noise
schedule's parameters (found under `model.SCHEDULE_SCOPE`); `weight_decay_mask='all_but_biases'`
extends it to every parameter but the biases, as the official VDM code does (its mask exempts
only biases and LayerNorm scales, and VDM has no LayerNorm).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import optax

from vdm_jax import model as model_lib
from vdm_jax.config import WEIGHT_DECAY_MASKS, OptimizerSpec

PyTree = Any


def decay_mask(params: PyTree, which: str = OptimizerSpec.weight_decay_mask) -> PyTree:
  """True for the leaves that get weight decay.

  which: 'kernels': every leaf but biases, norm scales and anything under the schedule's scope;
    'all_but_biases': every leaf not named 'bias' (norm scales and the schedule included).
  """
  if which not in WEIGHT_DECAY_MASKS:
    raise ValueError(f"weight decay mask must be one of {WEIGHT_DECAY_MASKS}, got {which!r}.")

  def decays(path, _):
    names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    if which == "all_but_biases":
      return names[-1] != "bias"
    return model_lib.SCHEDULE_SCOPE not in names and names[-1] not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(decays, params)


def learning_rate_schedule(spec: OptimizerSpec, num_steps: int) -> optax.Schedule:
  """lr(step), step 0-based: a linear warm-up reaching `spec.lr` at step warmup_steps - 1
  (lr * (step + 1) / warmup_steps), then constant ('none') or a 'linear' / 'cosine' decay to 0
  at `num_steps`."""
  warmup = spec.warmup_steps
  decay_steps = max(1, int(num_steps) - warmup)
  after = {"none": lambda: optax.constant_schedule(spec.lr),
           "linear": lambda: optax.linear_schedule(spec.lr, 0.0, decay_steps),
           "cosine": lambda: optax.cosine_decay_schedule(spec.lr, decay_steps)}[spec.decay]()
  if warmup == 0:
    return after
  ramp = (optax.linear_schedule(spec.lr / warmup, spec.lr, warmup - 1) if warmup > 1
          else optax.constant_schedule(spec.lr))
  return optax.join_schedules([ramp, after], [warmup])


def make_optimizer(spec: OptimizerSpec, num_steps: int) -> optax.GradientTransformation:
  """Clipping by global norm (`grad_clip`; 0 = off), then AdamW on `learning_rate_schedule`
  with `decay_mask` (`weight_decay_mask`). The learning rate is injected (`optax.inject_hyperparams`) so the state
  records the rate of each update; the clipping stage is always present so that turning it on
  or off keeps the state's structure. Memoised: equal settings give the same object, so the
  compiled train step is reused."""
  return _make(spec, int(num_steps) if spec.decay != "none" else 0)


@functools.lru_cache(maxsize=16)
def _make(spec: OptimizerSpec, num_steps: int) -> optax.GradientTransformation:
  # clip_by_global_norm(inf) passes gradients through unchanged (it selects them, no arithmetic).
  max_norm = spec.grad_clip if spec.grad_clip > 0 else math.inf
  adamw = optax.inject_hyperparams(
      optax.adamw, static_args=("b1", "b2", "eps", "weight_decay", "mask"))(
          learning_rate=learning_rate_schedule(spec, num_steps), b1=spec.b1, b2=spec.b2,
          eps=spec.eps, weight_decay=spec.weight_decay,
          mask=functools.partial(decay_mask, which=spec.weight_decay_mask))
  return optax.chain(optax.clip_by_global_norm(max_norm), adamw)


def learning_rate(opt_state: PyTree) -> jax.Array:
  """The learning rate of the last update (float32 scalar), read from a `make_optimizer` state."""
  # The injected value, not the schedule's own state stored under the same name.
  lr = optax.tree.get(opt_state, "learning_rate",
                      filtering=lambda _, value: not isinstance(value, tuple))
  return jnp.asarray(lr, jnp.float32)


def ema_decay(ema_rate: float, step: jax.Array) -> jax.Array:
  """The EMA's decay at (0-based) update `step`: min(ema_rate, (1 + step) / (10 + step)), so
  that early averages are not dominated by the initialisation."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))
