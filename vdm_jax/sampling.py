"""The reverse chain: ancestral and DDIM sampling, guidance, inpainting, trajectories.

Notation as in `vdm_jax.diffusion`. With T steps, step i = T, ..., 1 maps z_t to z_s at t = i / T and
s = (i - 1) / T (`diffusion.reverse_step`):

    x_hat = (z_t - sigma_t eps_hat) / alpha_t
    z_s   = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps

starting from z_1 ~ N(0, I); z_0 is then decoded with the model's discrete decoder p(x | z_0)
(`likelihood.decoder_logits` at gamma(0)). The whole chain is ONE `lax.scan`, so the program size
does not grow with T, and any T works for a continuous-time model.

eta convention (`sample`, `sample_model`):
  * sampler="ancestral": eta = 1, i.e. z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat). Passing any
    other eta is an error.
  * sampler="ddim": the `eta` argument, a number in [0, 1]; eta=None means 0 (deterministic DDIM:
    after z_1 the chain draws no noise). eta = 1 is the ancestral chain again.

Classifier-free guidance (`guided_eps_fn`): eps_w = (1 + w) eps(z, labels) - w eps(z, null),
computed as eps_c + w (eps_c - eps_u). w = 0 given as a Python number skips the unconditional
evaluation, so the result is bitwise the conditional model.

Which arguments a chain accepts (`check_chain_args`, `SAMPLERS`, `resolve_eta`, ...) is decided in
`vdm_jax.sampling_args`; those names are re-exported here.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, likelihood, schedules
from vdm_jax.sampling_args import (DECODERS, SAMPLERS, ChainArgs, check_chain_args, resolve_eta,
                                   resolve_trajectory_steps)

__all__ = ["DECODERS", "SAMPLERS", "ChainArgs", "Trajectory", "check_chain_args", "guided_eps_fn",
           "resolve_eta", "resolve_trajectory_steps", "sample", "sample_model"]

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]              # (z [B, ...], gamma_t [B]) -> eps_hat
GammaFn = Callable[[Array], Array]                   # t [B] -> gamma [B]
LabelEpsFn = Callable[[Array, Array, Array], Array]  # (z, gamma_t [B], labels [B]) -> eps_hat


class Trajectory(NamedTuple):
  """States of the reverse chain at the recorded steps, in chain order (t decreasing).

  t: [n] float32, the times i / T of the recorded steps.
  z: [n, *shape] float32, the latent z_t entering step i.
  x_hat: [n, *shape] float32, the denoiser's prediction x_hat(z_t) at that step (encoded data
    space, bin centres in (-1, 1); `likelihood.decode` maps it to integers).
  """
  t: Array
  z: Array
  x_hat: Array


# --------------------------------------------------------------------------------------------
# The sampler.


def sample(eps_fn: EpsFn, gamma_fn: GammaFn, key: Array, shape: Sequence[int], *, T: int,
           vocab_size: int = 256, sampler: str = "ancestral", eta: float | None = None,
           decode: str = "argmax", trajectory_steps: int | Sequence[int] = (),
           known: Array | None = None, known_mask: Array | None = None):
  """Draws integer images by running the reverse chain from z_1 ~ N(0, I) down to z_0.

  Args:
    eps_fn: (z [B, ...] float32, gamma_t [B] float32) -> eps_hat [B, ...], floating point.
    gamma_fn: t [B] -> gamma [B] (the schedule, elementwise); an output of shape () or any
      shape that broadcasts to [B] is accepted. Both output shapes are checked before the chain
      runs (ValueError), eps_fn's with `jax.eval_shape`, at no compute.
    key: PRNG key; z_1, the per-step noise, inpainting draws and the decoder draw come from it.
    shape: static output shape [B, ...] (rank >= 2).
    T: number of steps (int >= 1), static. Step i in T..1 goes from t = i/T to s = (i-1)/T.
    vocab_size: number of discrete values per dimension.
    sampler: "ancestral" (eta = 1) or "ddim" (uses `eta`); see the module docstring.
    eta: None for the sampler's default (ancestral 1, ddim 0), else a Python number in [0, 1].
    decode: how z_0 becomes integers under p(x | z_0): "argmax" (the most likely value per
      dimension; computed as the nearest bin centre of z_0 / alpha_0, which is the argmax of
      `likelihood.decoder_logits` without materialising V logits per dimension) or "sample" (a
      categorical draw from the decoder; memory shape + (V,) floats).
    trajectory_steps: a static tuple of step indices in [1, T], or a count n (n steps evenly
      spaced from T to 1). When non-empty, returns (samples, Trajectory) instead of samples.
      Memory: the scan carries two buffers of (n + 1) * prod(shape) float32 (one spare slot
      takes the writes of unrecorded steps, so each step costs one in-place row update and no
      branch); nothing grows with T.
    known, known_mask: inpainting. `known` int images of `shape`, `known_mask` bool broadcastable
      to `shape` (True = known). z_1 and every z_s are replaced on the known region by a draw from
      q(z_s | x_known) (`diffusion.sample_marginal`); the returned images equal `known` exactly
      where the mask is True. This replacement conditioning approximates p(x_unknown | x_known):
      the unknown region can commit to a completion at high noise, before the known region is
      informative (more steps do not remove that).

  Returns:
    int32 images of `shape` with values in [0, vocab_size); with trajectory steps, the pair
    (images, Trajectory).

  Use under jit with the non-array arguments static, e.g.
  `jax.jit(functools.partial(sample, eps_fn, gamma_fn, shape=(8, 28, 28, 1), T=1000))`.
  """
  args = check_chain_args(shape, vocab_size, T=T, sampler=sampler, eta=eta, decode=decode,
                          trajectory_steps=trajectory_steps, known=known, known_mask=known_mask)
  shape, vocab_size, T, eta, decode = args.shape, args.vocab_size, args.T, args.eta, args.decode
  steps, known, known_mask = args.trajectory_steps, args.known, args.known_mask

  batch = shape[0]
  key_init, key_steps, key_known, key_decode = jax.random.split(key, 4)
  gamma_1 = jnp.asarray(gamma_fn(jnp.ones((batch,), jnp.float32)), jnp.float32)
  _check_model_fns(eps_fn, gamma_1, shape)
  z_1 = jax.random.normal(key_init, shape, jnp.float32)
  if known is not None:
    x_known = likelihood.encode(known, vocab_size)
    z_known, _ = diffusion.sample_marginal(jax.random.fold_in(key_known, T), x_known, gamma_1)
    z_1 = jnp.where(known_mask, z_known, z_1)

  n_rec = len(steps)
  if n_rec:
    # slot_of[i] = position of step i in the trajectory, or the spare slot n_rec.
    slot_of = np.full((T + 1,), n_rec, np.int32)
    slot_of[list(steps)] = np.arange(n_rec, dtype=np.int32)
    slot_of = jnp.asarray(slot_of)
    buffers = (jnp.zeros((n_rec + 1,) + shape, jnp.float32),) * 2
  else:
    buffers = ()

  def step(carry, i):
    z_t, gamma_t, bufs = carry
    s = (i - 1).astype(jnp.float32) / T
    gamma_s = jnp.asarray(gamma_fn(jnp.full((batch,), s, jnp.float32)), jnp.float32)
    eps_hat = jnp.asarray(eps_fn(z_t, gamma_t), jnp.float32)
    step_key = None if eta == 0.0 else jax.random.fold_in(key_steps, i)
    z_s = diffusion.reverse_step(step_key, z_t, eps_hat, gamma_s, gamma_t, eta)
    if known is not None:
      z_known, _ = diffusion.sample_marginal(jax.random.fold_in(key_known, i - 1), x_known,
                                             gamma_s)
      z_s = jnp.where(known_mask, z_known, z_s)
    if n_rec:
      slot = slot_of[i]
      x_hat = diffusion.predict_x(z_t, eps_hat, gamma_t)
      bufs = (jax.lax.dynamic_update_index_in_dim(bufs[0], z_t, slot, 0),
              jax.lax.dynamic_update_index_in_dim(bufs[1], x_hat, slot, 0))
    return (z_s, gamma_s, bufs), None

  (z_0, gamma_0, buffers), _ = jax.lax.scan(
      step, (z_1, gamma_1, buffers), jnp.arange(T, 0, -1, dtype=jnp.int32))

  if decode == "argmax":
    z0r = z_0 / schedules.alpha(diffusion.expand_to(gamma_0, z_0))
    images = likelihood.decode(z0r, vocab_size)
  else:
    logits = likelihood.decoder_logits(z_0, gamma_0, vocab_size)
    images = jax.random.categorical(key_decode, logits, axis=-1).astype(jnp.int32)
  if known is not None:
    images = jnp.where(known_mask, known, images)

  if not n_rec:
    return images
  t_rec = jnp.asarray(np.asarray(steps, np.float32) / np.float32(T))
  return images, Trajectory(t=t_rec, z=buffers[0][:n_rec], x_hat=buffers[1][:n_rec])


def _describe(out) -> str:
  """What a function returned, for error messages: dtype and shape, or the container type."""
  if hasattr(out, "shape") and hasattr(out, "dtype"):
    return f"{out.dtype} of shape {tuple(out.shape)}"
  return f"a {type(out).__name__}"


def _check_model_fns(eps_fn: EpsFn, gamma_1: Array, shape: tuple[int, ...]) -> None:
  """ValueError unless gamma_fn's output gamma_1 broadcasts to [B] and eps_fn returns a float
  array of `shape` [B, ...].

  A wrong shape would otherwise surface deep inside `lax.scan` as "carry types differ". eps_fn is
  traced with `jax.eval_shape`, so this check computes nothing and draws no random numbers.
  """
  batch = shape[0]
  try:
    gamma_ok = np.broadcast_shapes(gamma_1.shape, (batch,)) == (batch,)
  except ValueError:
    gamma_ok = False
  if not gamma_ok:
    raise ValueError(
        f"gamma_fn must map t [B] = ({batch},) to gamma of a shape that broadcasts to [B], e.g. "
        f"() or ({batch},); it returned {_describe(gamma_1)}. Make gamma_fn elementwise in t.")
  out = jax.eval_shape(eps_fn, jax.ShapeDtypeStruct(shape, jnp.float32),
                       jax.ShapeDtypeStruct(gamma_1.shape, jnp.float32))
  if not (hasattr(out, "shape") and hasattr(out, "dtype") and tuple(out.shape) == shape
          and jnp.issubdtype(out.dtype, jnp.floating)):
    raise ValueError(
        f"eps_fn(z, gamma_t) must return eps_hat of the shape of z, [B, ...] = {shape}, in "
        f"floating point; for z float32 {shape} and gamma_t float32 {tuple(gamma_1.shape)} it "
        f"returned {_describe(out)}.")


# --------------------------------------------------------------------------------------------
# Classifier-free guidance.


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
  if isinstance(weight, numbers.Real) and not isinstance(weight, bool):
    if not weight >= 0.0:
      raise ValueError(f"guidance weight must be >= 0, got {weight}.")
    if weight == 0:
      return lambda z, gamma_t: eps_fn_labels(z, gamma_t, labels)

  def eps_fn(z, gamma_t):
    batch = z.shape[0]
    gamma_t = jnp.broadcast_to(jnp.asarray(gamma_t, jnp.float32), (batch,))
    lab = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
    both = eps_fn_labels(jnp.concatenate([z, z]), jnp.concatenate([gamma_t, gamma_t]),
                         jnp.concatenate([lab, jnp.full((batch,), null_label, jnp.int32)]))
    eps_c, eps_u = both[:batch], both[batch:]
    w = jnp.asarray(weight, eps_c.dtype)
    return eps_c + w * (eps_c - eps_u)

  return eps_fn


# --------------------------------------------------------------------------------------------
# Model-level sampling.


@functools.partial(jax.jit, static_argnames=(
    "model", "num_samples", "T", "sampler", "eta", "decode", "trajectory_steps", "guided"))
def _sample_model_jit(variables, key, labels, guidance_weight, known, known_mask, *, model,
                      num_samples, T, sampler, eta, decode, trajectory_steps, guided):
  def eps_labels(z, g, lab):
    return model.apply(variables, z, g, lab, method=model.eps)

  if guided:
    eps_fn = guided_eps_fn(eps_labels, labels, model.num_classes, guidance_weight)
  else:
    eps_fn = functools.partial(eps_labels, lab=labels)

  def gamma_fn(t):
    return model.apply(variables, t, method=model.gamma)

  return sample(eps_fn, gamma_fn, key, (num_samples, *model.image_shape), T=T,
                vocab_size=model.vocab_size, sampler=sampler, eta=eta, decode=decode,
                trajectory_steps=trajectory_steps, known=known, known_mask=known_mask)


def sample_model(model, variables: Any, key: Array, num_samples: int, *, T: int,
                 sampler: str = "ancestral", eta: float | None = None,
                 labels: Array | None = None, guidance_weight: float = 0.0,
                 decode: str = "argmax", trajectory_steps: int | Sequence[int] = (),
                 known: Array | None = None, known_mask: Array | None = None):
  """Samples a `model.VDM` (or any module with its `eps` / `gamma` / attributes interface).

  Uses `model.apply(variables, z, gamma, labels, method=model.eps)` (train=False: no dropout) and
  `model.apply(variables, t, method=model.gamma)`.

  Args:
    model: the module; needs image_shape, vocab_size, num_classes, `eps` and `gamma`.
    variables: its variables (e.g. the EMA parameters {'params': ...}).
    key: PRNG key.
    num_samples: number of images B.
    T: number of sampling steps (any T for a continuous-time model; for a model trained in
      discrete time, its own T matches the trained ELBO).
    sampler, eta, decode, trajectory_steps, known, known_mask: as in `sample`.
    labels: int [B] in [0, num_classes) for a class-conditional model (num_classes > 0); None
      samples with the null label (num_classes), i.e. unconditionally. Must be None when
      num_classes == 0.
    guidance_weight: classifier-free guidance weight w >= 0 (`guided_eps_fn`); needs labels.
      w == 0 samples the conditional model exactly. Nonzero weights are a traced argument: one
      compilation serves every w > 0.

  Returns:
    int32 images [num_samples, *model.image_shape] in [0, vocab_size); with trajectory steps,
    the pair (images, Trajectory).

  Compiled once per (model, variables structure, num_samples, T, sampler, eta, decode,
  trajectory steps, guided or not, labels / inpainting present or not): repeated calls with the
  same settings reuse the compiled chain.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or \
      num_samples < 1:
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  num_samples = int(num_samples)
  args = check_chain_args((num_samples, *model.image_shape), model.vocab_size, T=T,
                          sampler=sampler, eta=eta, decode=decode,
                          trajectory_steps=trajectory_steps, known=known, known_mask=known_mask)
  num_classes = int(getattr(model, "num_classes", 0) or 0)
  labels_given = labels is not None
  if labels is not None:
    if num_classes == 0:
      raise ValueError("labels were given but the model is unconditional (num_classes == 0).")
    labels = jnp.asarray(labels)
    if labels.shape != (num_samples,) or not jnp.issubdtype(labels.dtype, jnp.integer):
      raise ValueError(f"labels must be int [num_samples]=({num_samples},), got "
                       f"{labels.dtype} {labels.shape}.")
    if not isinstance(labels, jax.core.Tracer):
      likelihood.check_range(labels, num_classes + 1)
    labels = labels.astype(jnp.int32)
  elif num_classes:
    labels = jnp.full((num_samples,), num_classes, jnp.int32)

  guided = not (isinstance(guidance_weight, numbers.Real) and guidance_weight == 0)
  if guided:
    if num_classes == 0:
      raise ValueError("classifier-free guidance needs a class-conditional model "
                       "(num_classes > 0).")
    if not labels_given:
      raise ValueError("classifier-free guidance needs labels (the classes to guide towards).")
    if isinstance(guidance_weight, numbers.Real) and not guidance_weight > 0:
      raise ValueError(f"guidance_weight must be >= 0, got {guidance_weight}.")
    guidance_weight = jnp.asarray(guidance_weight, jnp.float32)
  else:
    guidance_weight = None

  return _sample_model_jit(variables, key, labels, guidance_weight, args.known, args.known_mask,
                           model=model, num_samples=num_samples, T=args.T, sampler=args.sampler,
                           eta=args.eta, decode=args.decode,
                           trajectory_steps=args.trajectory_steps, guided=guided)
