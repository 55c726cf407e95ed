"""The solver protocol: a state initialised from z_1, advanced one network evaluation at a time.

A `Solver` is a pair of pure functions, in the spirit of optax's (init, update):

    z, state = solver.init(z_1, gamma_1)
    z_s, state = solver.update(key, z_t, eps_hat, state, step)    # once per step, i = T..1

`z` is always the point the network is evaluated at next; `eps_hat = eps_fn(z_t, gamma_t)` is
that evaluation; `state` is whatever the solver carries between steps (earlier data
predictions and log-SNRs for a multistep solver, () for a one-step one). `run_chain` runs the
T steps as ONE `lax.scan`, so the program size does not grow with T.
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]              # (z [B, ...], gamma_t [B]) -> eps_hat
GammaFn = Callable[[Array], Array]                   # t [B] -> gamma [B]


class Step(NamedTuple):
  """What `Solver.update` is told about the step it takes, from t = times[i] to s = times[i-1].

  i: int32 scalar, the step's index, T..1: the steps left, this one included.
  T: the number of steps of the chain (a static Python int).
  t, s: float32 scalars, the step's times (t > s).
  gamma_t, gamma_s: float32, scalar or [B]: the schedule at t and s (gamma_t > gamma_s).
  """
  i: Array
  T: int
  t: Array
  s: Array
  gamma_t: Array
  gamma_s: Array


class Solver(NamedTuple):
  """A sampler of the reverse chain: (init, update) over an explicit state.

  init: (z_1 [B, ...] float32, gamma_1 [B]) -> (z, state): the first point the network is
    evaluated at (z_1 itself, unless a wrapper changes it) and the initial state (a pytree).
  update: (key, z_t, eps_hat, state, step: Step) -> (z_s, state): one step from the network's
    eps_hat at z_t, to the next point z_s (z_0 after step i = 1). key: this step's PRNG key
    (fold_in(key, i); a deterministic solver ignores it).
  one_step: True when update uses nothing from earlier steps (its state carries no history):
    then the chain is a Markov chain of the latents and a wrapper may replace z between steps
    (`with_inpainting`).
  """
  init: Callable[[Array, Array], tuple[Array, Any]]
  update: Callable[[Array, Array, Array, Any, Step], tuple[Array, Any]]
  one_step: bool = True


def run_chain(eps_fn: EpsFn, gamma_fn: GammaFn, solver: Solver, key: Array, z_1: Array,
              gamma_1: Array, T: int, times: Array | None = None) -> tuple[Array, Array, Any]:
  """Runs steps T..1 of `solver` from z_1 as one `lax.scan`.

  Args:
    eps_fn: (z [B, ...], gamma_t [B]) -> eps_hat [B, ...], called once per step (T calls).
    gamma_fn: t [B] -> gamma [B]; called once per step, at s = t_(i-1), on [B] copies.
    solver: the `Solver` (possibly wrapped).
    key: PRNG key; step i gets fold_in(key, i).
    z_1: float32 [B, ...], the latent at t = 1.
    gamma_1: gamma_fn at t_T = 1 on [B] ones (scalar or [B]).
    T: the number of steps (static int >= 1).
    times: float32 [T + 1], t_0 = 0 < ... < t_T = 1 (`spacing.step_times`); None: t_i = i / T,
      computed in the loop as float32 i / T.

  Returns:
    (z_0 [z_1.shape] float32, gamma_0 (gamma_1's shape), the solver's final state).
  """
  batch = z_1.shape[0]
  if times is None:
    time_of = lambda i: i.astype(jnp.float32) / T
  else:
    times = jnp.asarray(times, jnp.float32)
    if times.shape != (T + 1,):
      raise ValueError(f"times must be [T + 1] = ({T + 1},), got shape {times.shape}.")
    time_of = lambda i: times[i]

  def body(carry, i):
    z_t, gamma_t, state = carry
    t, s = time_of(i), time_of(i - 1)
    gamma_s = jnp.asarray(gamma_fn(jnp.full((batch,), s, jnp.float32)), jnp.float32)
    eps_hat = jnp.asarray(eps_fn(z_t, gamma_t), jnp.float32)
    step = Step(i=i, T=T, t=t, s=s, gamma_t=gamma_t, gamma_s=gamma_s)
    z_s, state = solver.update(jax.random.fold_in(key, i), z_t, eps_hat, state, step)
    return (z_s, gamma_s, state), None

  z, state = solver.init(z_1, gamma_1)
  (z_0, gamma_0, state), _ = jax.lax.scan(
      body, (z, gamma_1, state), jnp.arange(T, 0, -1, dtype=jnp.int32))
  return z_0, gamma_0, state
