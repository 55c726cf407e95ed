"""Sampling: the reverse chain over a sampler protocol, the probability-flow ODE, guidance.

Notation as in `vdm_jax.diffusion`. With T steps, step i = T, ..., 1 of the reverse chain maps
z_t to z_s at t = i / T and s = (i - 1) / T by the sampler's `ReverseStep`,

    step(key, z_t, eps_hat, gamma_s, gamma_t) -> z_s,

for the built-in samplers (`ancestral_step`, `ddim_step`, i.e. `diffusion.reverse_step`)

    x_hat = (z_t - sigma_t eps_hat) / alpha_t
    z_s   = alpha_s x_hat + sqrt(sigma_s^2 - eta^2 sigma_Q^2) eps_hat + eta sigma_Q eps

starting from z_1 ~ N(0, I); z_0 is then decoded by the data model's decoder p(x | z_0) at
gamma(0) (`likelihood.Discrete`: integers, `likelihood.Continuous`: floats). The whole chain
is ONE `lax.scan`, so the program size does not grow with T, and any T works for a
continuous-time model. Inpainting and trajectory recording wrap any step (`with_inpainting`,
`with_trajectory` on a `ChainStep`); a new sampler is a step factory plus its entry in
`SAMPLERS` (see `vdm_jax.sampling_args`).

sampler="ode" instead integrates the probability-flow ODE from z_1 ~ N(0, I) at gamma(1) to
gamma(0) with an adaptive solver (`vdm_jax.ode.flow`; tolerances rtol / atol, no T): the map
z_1 -> z_0 is deterministic, so the images depend on the key through z_1 only (and the decoder
draw for decode="sample"). Its number of network evaluations per image is returned with
return_info=True (`SampleInfo`).

eta convention (`sample`, `sample_model`):
  * sampler="ancestral": eta = 1, i.e. z_s ~ p(z_s | z_t) = q(z_s | z_t, x = x_hat). Passing any
    other eta is an error.
  * sampler="ddim": the `eta` argument, a number in [0, 1]; eta=None means 0 (deterministic DDIM:
    after z_1 the chain draws no noise). eta = 1 is the ancestral chain again.
  * sampler="ode": takes no eta.

Classifier-free guidance (`guided_eps_fn`): eps_w = (1 + w) eps(z, labels) - w eps(z, null),
computed as eps_c + w (eps_c - eps_u). w = 0 given as a Python number skips the unconditional
evaluation, so the result is bitwise the conditional model.

Which arguments a sampler accepts (`check_chain_args`, `SAMPLERS`, `resolve_eta`, ...) is decided
in `vdm_jax.sampling_args`; those names are re-exported here.
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, likelihood, ode, schedules
from vdm_jax.sampling_args import (SAMPLERS, ChainArgs, ReverseStep, Sampler,
                                   ancestral_step, check_chain_args, ddim_step, is_chain,
                                   resolve_eta, resolve_tolerances, resolve_trajectory_steps)

__all__ = ["SAMPLERS", "ChainArgs", "ChainStep", "ReverseStep", "SampleInfo",
           "Sampler", "Trajectory", "ancestral_step", "chain_step", "check_chain_args",
           "ddim_step", "guided_eps_fn", "is_chain", "resolve_eta", "resolve_tolerances",
           "resolve_trajectory_steps", "run_chain", "sample", "sample_model", "trajectory_of", "with_inpainting",
           "with_trajectory"]

Array = jax.Array
EpsFn = Callable[[Array, Array], Array]              # (z [B, ...], gamma_t [B]) -> eps_hat
GammaFn = Callable[[Array], Array]                   # t [B] -> gamma [B]
LabelEpsFn = Callable[[Array, Array, Array], Array]  # (z, gamma_t [B], labels [B]) -> eps_hat


class Trajectory(NamedTuple):
  """States of the reverse chain at the recorded steps, in chain order (t decreasing).

  t: [n] float32, the times i / T of the recorded steps.
  z: [n, *shape] float32, the latent z_t entering step i.
  x_hat: [n, *shape] float32, the denoiser's prediction x_hat(z_t) at that step (encoded data
    space: for `likelihood.Discrete`, its `nearest` maps it to integers).
  """
  t: Array
  z: Array
  x_hat: Array


class SampleInfo(NamedTuple):
  """What drawing the samples cost, per image (`sample(..., return_info=True)`).

  num_steps: int32 [B], the steps taken: T for a chain, the solver's (accepted and rejected)
    for sampler="ode".
  num_evals: int32 [B], evaluations of eps_fn for the image (network evaluations): T for a
    chain, `ode.ODEInfo.num_evals` for sampler="ode". A guided eps_fn (`guided_eps_fn`) runs
    the network once per evaluation on a doubled batch.
  """
  num_steps: Array
  num_evals: Array


# --------------------------------------------------------------------------------------------
# The reverse chain: a step, wrappers around it, one lax.scan.


class ChainStep(NamedTuple):
  """Step i of the reverse chain with any extra state it carries through the `lax.scan`.

  init: a pytree, the extra state at the start of the chain (() for none).
  begin: (z_1, gamma_1) -> z_1, applied to the chain's initial noise.
  apply: (state, i, z_t, eps_hat, gamma_s, gamma_t) -> (z_s, state), step i (int32 scalar,
    T..1) from t = i / T to s = (i - 1) / T.

  `chain_step` makes one from a sampler's `ReverseStep`; `with_inpainting` and
  `with_trajectory` wrap any ChainStep.
  """
  init: Any
  begin: Callable[[Array, Array], Array]
  apply: Callable[..., tuple[Array, Any]]


def chain_step(step: ReverseStep, key: Array) -> ChainStep:
  """The ChainStep running `step` with key fold_in(key, i) at step i (no extra state)."""
  def apply(state, i, z_t, eps_hat, gamma_s, gamma_t):
    return step(jax.random.fold_in(key, i), z_t, eps_hat, gamma_s, gamma_t), state
  return ChainStep(init=(), begin=lambda z_1, gamma_1: z_1, apply=apply)


def with_inpainting(inner: ChainStep, x_known: Array, known_mask: Array, key: Array,
                    T: int) -> ChainStep:
  """Replacement conditioning around any step: z_1 and every z_s are replaced on the known
  region by a draw of q(z_s | x_known) (`diffusion.sample_marginal`, key fold_in(key, j) at
  time j / T).

  x_known: encoded data (the data model's `encode`) of the sample shape; known_mask: bool,
  broadcast to it (True = known).
  """
  def replace(j, z, gamma):
    z_known, _ = diffusion.sample_marginal(jax.random.fold_in(key, j), x_known, gamma)
    return jnp.where(known_mask, z_known, z)

  def apply(state, i, z_t, eps_hat, gamma_s, gamma_t):
    z_s, state = inner.apply(state, i, z_t, eps_hat, gamma_s, gamma_t)
    return replace(i - 1, z_s, gamma_s), state

  return ChainStep(init=inner.init,
                   begin=lambda z_1, gamma_1: replace(T, inner.begin(z_1, gamma_1), gamma_1),
                   apply=apply)


def with_trajectory(inner: ChainStep, steps: Sequence[int], T: int,
                    shape: tuple[int, ...]) -> ChainStep:
  """Records z_t and x_hat(z_t) entering each of `steps` (indices in [1, T], chain order),
  around any step. Its state is (inner state, (z buffer, x_hat buffer)); `trajectory_of` reads
  the result.

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

  def apply(state, i, z_t, eps_hat, gamma_s, gamma_t):
    inner_state, bufs = state
    z_s, inner_state = inner.apply(inner_state, i, z_t, eps_hat, gamma_s, gamma_t)
    slot = slot_of[i]
    x_hat = diffusion.predict_x(z_t, eps_hat, gamma_t)
    bufs = (jax.lax.dynamic_update_index_in_dim(bufs[0], z_t, slot, 0),
            jax.lax.dynamic_update_index_in_dim(bufs[1], x_hat, slot, 0))
    return z_s, (inner_state, bufs)

  return ChainStep(init=(inner.init, buffers), begin=inner.begin, apply=apply)


def trajectory_of(state, steps: Sequence[int], T: int) -> Trajectory:
  """The `Trajectory` in the final state of a chain wrapped last by `with_trajectory`."""
  _, (z_buf, x_buf) = state
  n_rec = len(steps)
  t_rec = jnp.asarray(np.asarray(steps, np.float32) / np.float32(T))
  return Trajectory(t=t_rec, z=z_buf[:n_rec], x_hat=x_buf[:n_rec])


def run_chain(eps_fn: EpsFn, gamma_fn: GammaFn, step: ChainStep, z_1: Array, gamma_1: Array,
              T: int) -> tuple[Array, Array, Any]:
  """Runs steps T..1 of the reverse chain from z_1 (after `step.begin`) as one `lax.scan`.

  Returns (z_0 [z_1.shape] float32, gamma_0 (gamma_1's shape), the final extra state).
  """
  batch = z_1.shape[0]

  def body(carry, i):
    z_t, gamma_t, state = carry
    s = (i - 1).astype(jnp.float32) / T
    gamma_s = jnp.asarray(gamma_fn(jnp.full((batch,), s, jnp.float32)), jnp.float32)
    eps_hat = jnp.asarray(eps_fn(z_t, gamma_t), jnp.float32)
    z_s, state = step.apply(state, i, z_t, eps_hat, gamma_s, gamma_t)
    return (z_s, gamma_s, state), None

  (z_0, gamma_0, state), _ = jax.lax.scan(
      body, (step.begin(z_1, gamma_1), gamma_1, step.init),
      jnp.arange(T, 0, -1, dtype=jnp.int32))
  return z_0, gamma_0, state


# --------------------------------------------------------------------------------------------
# The sampler.


def sample(eps_fn: EpsFn, gamma_fn: GammaFn, key: Array, shape: Sequence[int], *,
           T: int | None = None, data: likelihood.DataModel | None = None,
           vocab_size: int | None = None, sampler: str = "ancestral",
           eta: float | None = None, decode: str | None = None,
           trajectory_steps: int | Sequence[int] = (), known: Array | None = None,
           known_mask: Array | None = None, rtol: float | None = None,
           atol: float | None = None, return_info: bool = False):
  """Draws data: the reverse chain (or the probability-flow ODE) from z_1 ~ N(0, I) down to
  z_0, then the data model's decoder.

  Args:
    eps_fn: (z [B, ...] float32, gamma_t [B] float32) -> eps_hat [B, ...], floating point.
    gamma_fn: t [B] -> gamma [B] (the schedule, elementwise); an output of shape () or any
      shape that broadcasts to [B] is accepted. Both output shapes are checked before the chain
      runs (ValueError), eps_fn's with `jax.eval_shape`, at no compute.
    key: PRNG key; z_1, the per-step noise, inpainting draws and the decoder draw come from it.
    shape: static output shape [B, ...] (rank >= 2).
    T: number of steps of a chain sampler (int >= 1), static. Step i in T..1 goes from t = i/T
      to s = (i-1)/T. None for sampler="ode" (it picks its own steps).
    data: the data model (`likelihood.Discrete(...)`, `likelihood.Continuous()`), static; it
      decodes z_0 and checks `known`. None: `Discrete(vocab_size)`.
    vocab_size: shorthand for data=likelihood.Discrete(vocab_size) (256 when neither is given).
    sampler: a key of `SAMPLERS`: "ancestral" (eta = 1), "ddim" (uses `eta`) or "ode" (the
      probability-flow ODE, adaptive; see the module docstring).
    eta: None for the sampler's default (ancestral 1, ddim 0, ode none), else a Python number
      in [0, 1].
    decode: how z_0 becomes data under p(x | z_0), one of `data.decoders`; None: its first.
      Discrete: "argmax" (the most likely value per dimension, the nearest bin centre of
      z_0 / alpha_0, without materialising V logits per dimension) or "sample" (a categorical
      draw; memory shape + (V,) floats). Continuous: "mean" (z_0 / alpha_0) or "sample" (a
      draw of N(z_0 / alpha_0, exp(gamma_0) I)).
    trajectory_steps: a static tuple of step indices in [1, T], or a count n (n steps evenly
      spaced from T to 1). When non-empty, a `Trajectory` is returned after the samples
      (`with_trajectory`; memory independent of T). Chain samplers only.
    known, known_mask: inpainting (chain samplers only). `known` data of `shape` (as the data
      model takes it), `known_mask` bool broadcastable to `shape` (True = known). z_1 and every
      z_s are replaced on the known region by a draw from q(z_s | x_known) (`with_inpainting`);
      the returned samples equal `known` exactly where the mask is True. This replacement
      conditioning approximates p(x_unknown | x_known): the unknown region can commit to a
      completion at high noise, before the known region is informative (more steps do not
      remove that).
    rtol, atol: sampler="ode" only: the solver's relative and absolute tolerances on z (static
      Python numbers in (0, 1); None: `ode.RTOL`, `ode.ATOL`).
    return_info: also return a `SampleInfo` (steps and network evaluations per image), last.

  Returns:
    samples of `shape` in the data model's dtype (int32 in [0, vocab_size) for Discrete,
    float32 for Continuous); with trajectory steps, the pair (samples, Trajectory); with
    return_info, `SampleInfo` appended: (samples, info) or (samples, Trajectory, info).

  Use under jit with the non-array arguments static, e.g.
  `jax.jit(functools.partial(sample, eps_fn, gamma_fn, shape=(8, 28, 28, 1), T=1000))`.
  """
  args = check_chain_args(shape, data, vocab_size=vocab_size, T=T, sampler=sampler, eta=eta,
                          decode=decode, trajectory_steps=trajectory_steps, known=known,
                          known_mask=known_mask, rtol=rtol, atol=atol)
  shape, data, T, steps = args.shape, args.data, args.T, args.trajectory_steps

  batch = shape[0]
  key_init, key_steps, key_known, key_decode = jax.random.split(key, 4)
  gamma_1 = jnp.asarray(gamma_fn(jnp.ones((batch,), jnp.float32)), jnp.float32)
  _check_model_fns(eps_fn, gamma_1, shape)
  z_1 = jax.random.normal(key_init, shape, jnp.float32)

  if is_chain(args.sampler):
    step = chain_step(SAMPLERS[args.sampler].make_step(args.eta), key_steps)
    if args.known is not None:
      step = with_inpainting(step, data.encode(args.known), args.known_mask, key_known, T)
    if steps:
      step = with_trajectory(step, steps, T, shape)
    z_0, gamma_0, state = run_chain(eps_fn, gamma_fn, step, z_1, gamma_1, T)
    info = SampleInfo(num_steps=jnp.full((batch,), T, jnp.int32),
                      num_evals=jnp.full((batch,), T, jnp.int32))
  else:
    gamma_0 = jnp.asarray(gamma_fn(jnp.zeros((batch,), jnp.float32)), jnp.float32)
    z_0, ode_info = ode.flow(eps_fn, z_1, gamma_1, gamma_0, rtol=args.rtol, atol=args.atol)
    info = SampleInfo(num_steps=ode_info.num_steps, num_evals=ode_info.num_evals)

  samples = data.decode(z_0, gamma_0, key=key_decode, mode=args.decode)
  if args.known is not None:
    samples = jnp.where(args.known_mask, args.known, samples)

  out = (samples,)
  if steps:
    out += (trajectory_of(state, steps, T),)
  if return_info:
    out += (info,)
  return out[0] if len(out) == 1 else out


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
    "model", "num_samples", "T", "sampler", "eta", "decode", "trajectory_steps", "guided",
    "rtol", "atol", "return_info"))
def _sample_model_jit(variables, key, labels, guidance_weight, known, known_mask, *, model,
                      num_samples, T, sampler, eta, decode, trajectory_steps, guided, rtol, atol,
                      return_info):
  def eps_labels(z, g, lab):
    return model.apply(variables, z, g, lab, method=model.eps)

  if guided:
    eps_fn = guided_eps_fn(eps_labels, labels, model.num_classes, guidance_weight)
  else:
    eps_fn = functools.partial(eps_labels, lab=labels)

  def gamma_fn(t):
    return model.apply(variables, t, method=model.gamma)

  return sample(eps_fn, gamma_fn, key, (num_samples, *model.image_shape), T=T,
                data=likelihood.data_model_of(model), sampler=sampler, eta=eta, decode=decode,
                trajectory_steps=trajectory_steps, known=known, known_mask=known_mask,
                rtol=rtol, atol=atol, return_info=return_info)


def sample_model(model, variables: Any, key: Array, num_samples: int, *, T: int | None = None,
                 sampler: str = "ancestral", eta: float | None = None,
                 labels: Array | None = None, guidance_weight: float = 0.0,
                 decode: str | None = None, trajectory_steps: int | Sequence[int] = (),
                 known: Array | None = None, known_mask: Array | None = None,
                 rtol: float | None = None, atol: float | None = None,
                 return_info: bool = False):
  """Samples a `model.VDM` (or any module with its `eps` / `gamma` / attributes interface).

  Uses `model.apply(variables, z, gamma, labels, method=model.eps)` (train=False: no dropout) and
  `model.apply(variables, t, method=model.gamma)`.

  Args:
    model: the module; needs image_shape, data (a data model; or vocab_size, its shorthand),
      num_classes, `eps` and `gamma`.
    variables: its variables (e.g. the EMA parameters {'params': ...}).
    key: PRNG key.
    num_samples: number of images B.
    T: number of sampling steps of a chain sampler (any T for a continuous-time model; for a
      model trained in discrete time, its own T matches the trained ELBO); None for "ode".
    sampler, eta, decode, trajectory_steps, known, known_mask, rtol, atol, return_info: as in
      `sample`.
    labels: int [B] in [0, num_classes) for a class-conditional model (num_classes > 0); None
      samples with the null label (num_classes), i.e. unconditionally. Must be None when
      num_classes == 0.
    guidance_weight: classifier-free guidance weight w >= 0 (`guided_eps_fn`); needs labels.
      w == 0 samples the conditional model exactly. Nonzero weights are a traced argument: one
      compilation serves every w > 0.

  Returns:
    samples [num_samples, *model.image_shape] of the model's data model (int32 in
    [0, vocab_size) for discrete data, float32 for continuous data); with trajectory steps
    and / or return_info, the tuple of `sample`.

  Compiled once per (model, variables structure, num_samples, T, sampler, eta, decode,
  trajectory steps, tolerances, guided or not, labels / inpainting present or not): repeated
  calls with the same settings reuse the compiled sampler.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or \
      num_samples < 1:
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  num_samples = int(num_samples)
  args = check_chain_args((num_samples, *model.image_shape), likelihood.data_model_of(model), T=T,
                          sampler=sampler, eta=eta, decode=decode,
                          trajectory_steps=trajectory_steps, known=known, known_mask=known_mask,
                          rtol=rtol, atol=atol)
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
                           trajectory_steps=args.trajectory_steps, guided=guided,
                           rtol=args.rtol, atol=args.atol, return_info=bool(return_info))
