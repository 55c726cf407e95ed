"""Wrappers: a `Solver` around a `Solver` (inpainting, trajectories), an eps_fn around an eps_fn
(classifier-free and classifier guidance).

Which solvers each composes with:
  * `with_trajectory` observes the chain (z and x_hat entering recorded steps): every solver.
  * `guided_eps_fn` and `classifier_guidance` change the network, not the solver: every solver
    (and the ODE); they compose with each other.
  * `with_inpainting` replaces z on the known region by a fresh draw of q(z_s | x_known) after
    every step: sound for one-step solvers only (`Solver.one_step`), whose next step depends on
    the current latent alone. A multistep solver extrapolates its earlier data predictions along
    one ODE path; the replacement's fresh noise makes that path jump at every step, and the
    extrapolation then amplifies the jumps instead of cancelling the step's error
    (`args.check_chain_args` refuses the combination).
"""
from __future__ import annotations

import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, nets
from vdm_jax.sampling.protocol import Array, EpsFn, Solver

LabelEpsFn = Callable[[Array, Array, Array], Array]  # (z, gamma_t [B], labels [B]) -> eps_hat
LogProbFn = Callable[[Array, Array, Array], Array]   # (z, gamma_t [B], labels [B]) -> [B] nats


class Trajectory(NamedTuple):
  """States of the reverse chain at the recorded steps, in chain order (t decreasing).

  t: [n] float32, the times t_i of the recorded steps (i / T for the uniform spacing).
  z: [n, *shape] float32, the latent z_t entering step i (the point the network is evaluated
    at).
  x_hat: [n, *shape] float32, the denoiser's prediction x_hat(z_t) at that step (encoded data
    space: for `likelihood.Discrete`, its `nearest` maps it to integers).
  """
  t: Array
  z: Array
  x_hat: Array


def with_inpainting(inner: Solver, x_known: Array, known_mask: Array, key: Array,
                    T: int) -> Solver:
  """Replacement conditioning around a one-step solver: z_1 and every z_s are replaced on the
  known region by a draw of q(z_s | x_known) (`diffusion.sample_marginal`, key fold_in(key, j)
  at the chain's j-th time, j = T for z_1, i - 1 after step i).

  x_known: encoded data (the data model's `encode`) of the sample shape; known_mask: bool,
  broadcast to it (True = known). Refuses a multistep solver (module docstring).
  """
  if not inner.one_step:
    raise ValueError("inpainting replaces the known region with fresh noise at every step, "
                     "which only a one-step solver is sound for (see sampling.wrappers).")

  def replace(j, z, gamma):
    z_known, _ = diffusion.sample_marginal(jax.random.fold_in(key, j), x_known, gamma)
    return jnp.where(known_mask, z_known, z)

  def init(z_1, gamma_1):
    z, state = inner.init(z_1, gamma_1)
    return replace(T, z, gamma_1), state

  def update(step_key, z_t, eps_hat, state, step):
    z_s, state = inner.update(step_key, z_t, eps_hat, state, step)
    return replace(step.i - 1, z_s, step.gamma_s), state

  return Solver(init=init, update=update, one_step=True)


def with_trajectory(inner: Solver, steps: Sequence[int], T: int,
                    shape: tuple[int, ...]) -> Solver:
  """Records z_t and x_hat(z_t) entering each of `steps` (indices in [1, T], chain order),
  around any solver. Its state is (inner state, (z buffer, x_hat buffer)); `trajectory_of`
  reads the result.

  Memory: two buffers of (n + 1) * prod(shape) float32 (one spare slot takes the writes of
  unrecorded steps, so each step costs one in-place row update and no branch); nothing grows
  with T.
  """
  n_rec = len(steps)
  # slot_of[i] = position of step i in the trajectory, or the spare slot n_rec.
  slot_of = np.full((T + 1,), n_rec, np.int32)
  slot_of[list(steps)] = np.arange(n_rec, dtype=np.int32)
  slot_of = jnp.asarray(slot_of)
  buffers = (jnp.zeros((n_rec + 1,) + tuple(shape), jnp.float32),) * 2

  def init(z_1, gamma_1):
    z, state = inner.init(z_1, gamma_1)
    return z, (state, buffers)

  def update(key, z_t, eps_hat, state, step):
    inner_state, (z_buf, x_buf) = state
    z_s, inner_state = inner.update(key, z_t, eps_hat, inner_state, step)
    slot = slot_of[step.i]
    x_hat = diffusion.predict_x(z_t, eps_hat, step.gamma_t)
    bufs = (jax.lax.dynamic_update_index_in_dim(z_buf, z_t, slot, 0),
            jax.lax.dynamic_update_index_in_dim(x_buf, x_hat, slot, 0))
    return z_s, (inner_state, bufs)

  return Solver(init=init, update=update, one_step=inner.one_step)


def trajectory_of(state, steps: Sequence[int], times: Array) -> Trajectory:
  """The `Trajectory` in the final state of a chain wrapped last by `with_trajectory`; times
  [T + 1] are the chain's (`spacing.step_times`)."""
  _, (z_buf, x_buf) = state
  n_rec = len(steps)
  t_rec = jnp.asarray(times, jnp.float32)[np.asarray(steps, np.int32)]
  return Trajectory(t=t_rec, z=z_buf[:n_rec], x_hat=x_buf[:n_rec])


def check_guidance_weight(weight) -> None:
  """Raises ValueError for a Python-number guidance weight that is not >= 0 (a traced one
  cannot be checked)."""
  if isinstance(weight, numbers.Real) and not isinstance(weight, bool) and not weight >= 0.0:
    raise ValueError(f"guidance_weight must be >= 0, got {weight}.")


def guided_eps_fn(eps_fn_labels: LabelEpsFn, labels: Array, null_label: int,
                  weight: float | Array) -> EpsFn:
  """Classifier-free guidance: eps_w(z, g) = (1 + w) eps(z, g, labels) - w eps(z, g, null).

  Args:
    eps_fn_labels: (z [B, ...], gamma_t [B], labels int [B]) -> eps_hat [B, ...].
    labels: int [B], the classes to sample.
    null_label: the label meaning "no class" (VDM: num_classes).
    weight: w >= 0. Computed as eps_c + w (eps_c - eps_u) with the conditional and unconditional
      predictions from ONE call on a batch of 2B ([z; z], [labels; null]).

  Convention for w = 0: when `weight` is a Python number equal to 0 the returned function is
  exactly the conditional model (one call, no unconditional evaluation), so samples are bitwise
  identical to sampling the conditional model. A traced weight always evaluates both branches;
  at w = 0 the arithmetic is then exact too (eps_c + 0 * finite), up to the network's own
  dependence on the batch size of the call.
  """
  check_guidance_weight(weight)
  if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
    if weight == 0:
      return lambda z, gamma_t: eps_fn_labels(z, gamma_t, labels)

  def eps_fn(z, gamma_t):
    batch = z.shape[0]
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (batch,))
    lab = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
    both = eps_fn_labels(jnp.concatenate([z, z]), jnp.concatenate([gamma_t, gamma_t]),
                         jnp.concatenate([lab, nets.null_labels(batch, null_label)]))
    eps_c, eps_u = both[:batch], both[batch:]
    w = jnp.asarray(weight, eps_c.dtype)
    return eps_c + w * (eps_c - eps_u)

  return eps_fn


def _check_labels(labels, num_classes: int | None, where: str) -> None:
  """Static checks of guidance labels: int [B], and in [0, num_classes) when concrete."""
  shape, dtype = jnp.shape(labels), jnp.result_type(labels)
  if len(shape) != 1 or not jnp.issubdtype(dtype, jnp.integer):
    raise ValueError(f"{where}: labels must be int [B], got {dtype} {tuple(shape)}.")
  if num_classes is not None and not isinstance(labels, jax.core.Tracer):
    values = np.asarray(labels)
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"{where}: labels must lie in [0, {num_classes}) (the classifier's "
                       f"classes), got values in [{values.min()}, {values.max()}].")


def classifier_guidance(eps_fn: EpsFn, log_prob_fn: LogProbFn, labels: Array,
                        scale: float | Array, *, num_classes: int | None = None) -> EpsFn:
  """Classifier guidance (Dhariwal & Nichol 2021) in eps form:

      eps_s(z, g) = eps_hat(z, g) - scale * sigma_t * grad_z log p(y | z_t),

  with sigma_t = sqrt(sigmoid(gamma_t)). Since eps = -sigma_t * score, this is the score of
  p(z_t) p(y | z_t)^scale: scale = 1 with the exact classifier is the class-conditional model
  exactly, scale = 0 the unconditional one, larger scales sharpen towards the examples the
  classifier is surest of.

  Args:
    eps_fn: (z [B, ...], gamma_t [B]) -> eps_hat [B, ...]; e.g. an unconditional network, or
      `guided_eps_fn`'s output (the two compose).
    log_prob_fn: (z_t [B, ...], gamma_t [B], labels int [B]) -> log p(labels | z_t) [B] in
      nats, differentiable in z_t; example i's value may depend on z_t[i] only (the gradient
      of the batch sum is taken, which is then each example's own).
    labels: int [B], the classes asked for.
    scale: >= 0; a Python 0 returns `eps_fn` itself (bitwise the unguided sampler). A traced
      scale is taken as it is.
    num_classes: the classifier's class count: labels outside [0, num_classes) are refused
      (when concrete).

  Returns:
    eps_fn of the guided model; pure and jit-safe, for every solver and the ODE.
  """
  _check_labels(labels, num_classes, "classifier_guidance")
  if isinstance(scale, numbers.Real) and not isinstance(scale, bool):
    if not (np.isfinite(scale) and scale >= 0.0):
      raise ValueError(f"classifier_guidance: scale must be a finite number >= 0, got {scale}.")
    if scale == 0:
      return eps_fn

  def guided(z, gamma_t):
    batch = z.shape[0]
    if jnp.shape(labels)[0] != batch:
      raise ValueError(f"classifier_guidance: {jnp.shape(labels)[0]} labels for a batch of "
                       f"{batch}: give one label per sample.")
    gamma_b = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (batch,))
    lab = jnp.asarray(labels, jnp.int32)
    grad = jax.grad(lambda x: jnp.sum(log_prob_fn(x, gamma_b, lab)))(z)
    sigma = jnp.sqrt(jax.nn.sigmoid(diffusion.expand_to(gamma_b, z)))
    return eps_fn(z, gamma_t) - jnp.asarray(scale, z.dtype) * sigma * grad

  return guided
