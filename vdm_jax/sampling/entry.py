"""The public entry: `sample` (any eps_fn / gamma_fn) and `sample_model` (a VDM module)."""
from __future__ import annotations

import functools
import numbers
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import likelihood, nets, ode
from vdm_jax import model as model_lib
from vdm_jax.sampling import spacing as spacing_lib
from vdm_jax.sampling.args import ChainArgs, check_chain_args, is_chain, make_solver
from vdm_jax.sampling.protocol import Array, EpsFn, GammaFn, run_chain
from vdm_jax.sampling.wrappers import (check_guidance_weight, guided_eps_fn, trajectory_of,
                                       with_inpainting, with_trajectory)


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


def sample(eps_fn: EpsFn, gamma_fn: GammaFn, key: Array, shape: Sequence[int], *,
           T: int | None = None, data: likelihood.DataModel | None = None,
           vocab_size: int | None = None, sampler: str = "ancestral",
           eta: float | None = None, decode: str | None = None,
           trajectory_steps: int | Sequence[int] = (), known: Array | None = None,
           known_mask: Array | None = None, rtol: float | None = None,
           atol: float | None = None, spacing: str | None = None, order: int | None = None,
           z_1: Array | None = None, return_info: bool = False):
  """Draws data: a solver of the reverse chain (or the probability-flow ODE) from z_1 down to
  z_0, then the data model's decoder.

  Args:
    eps_fn: (z [B, ...] float32, gamma_t [B] float32) -> eps_hat [B, ...], floating point.
    gamma_fn: t [B] -> gamma [B] (the schedule, elementwise); an output of shape () or any
      shape that broadcasts to [B] is accepted. Both output shapes are checked before the chain
      runs (ValueError), eps_fn's with `jax.eval_shape`, at no compute.
    key: PRNG key; z_1 (unless given), the per-step noise, inpainting draws and the decoder
      draw come from it (split 4 ways in that order; step i folds in i).
    shape: static output shape [B, ...] (rank >= 2).
    T: number of steps of a chain sampler (int >= 1), static: the number of network
      evaluations. Step i in T..1 goes from t_i to t_(i-1) (`spacing`). None for sampler="ode"
      (it picks its own steps).
    data: the data model (`likelihood.Discrete(...)`, `likelihood.Continuous()`), static; it
      decodes z_0 and checks `known`. None: `Discrete(vocab_size)`.
    vocab_size: shorthand for data=likelihood.Discrete(vocab_size) (256 when neither is given).
    sampler: a key of `SAMPLERS`: "ancestral" (eta = 1), "ddim" (uses `eta`), "dpmpp_2m",
      "dpmpp_3m", "unipc" (multistep, deterministic; see `sampling.multistep`) or "ode" (the
      probability-flow ODE, adaptive).
    eta: None for the sampler's default (ancestral 1, ddim 0, the others none), else a Python
      number in [0, 1].
    decode: how z_0 becomes data under p(x | z_0), one of `data.decoders`; None: its first.
      Discrete: "argmax" (the most likely value per dimension, the nearest bin centre of
      z_0 / alpha_0, without materialising V logits per dimension) or "sample" (a categorical
      draw; memory shape + (V,) floats). Continuous: "mean" (z_0 / alpha_0) or "sample" (a
      draw of N(z_0 / alpha_0, exp(gamma_0) I)).
    trajectory_steps: a static tuple of step indices in [1, T], or a count n (n steps evenly
      spaced from T to 1). When non-empty, a `Trajectory` is returned after the samples
      (`with_trajectory`; memory independent of T). Chain samplers only.
    known, known_mask: inpainting (one-step chain samplers only: ancestral, ddim). `known` data
      of `shape` (as the data model takes it), `known_mask` bool broadcastable to `shape`
      (True = known). z_1 and every z_s are replaced on the known region by a draw from
      q(z_s | x_known) (`with_inpainting`); the returned samples equal `known` exactly where
      the mask is True. This replacement conditioning approximates p(x_unknown | x_known): the
      unknown region can commit to a completion at high noise, before the known region is
      informative (more steps do not remove that).
    rtol, atol: sampler="ode" only: the solver's relative and absolute tolerances on z (static
      Python numbers in (0, 1); None: `ode.RTOL`, `ode.ATOL`).
    spacing: the chain's times t_0 = 0 < ... < t_T = 1, one of `spacing.SPACINGS`:
      "uniform_t" (t_i = i / T), "logsnr" (uniform in log-SNR) or "karras" (rho = 7 in
      sigma / alpha). None: the sampler's default, "uniform_t" for ancestral and ddim, "logsnr"
      for the multistep solvers. Chain samplers only. Called eagerly, a schedule that cannot
      give the spacing (not increasing; jumping over a grid value) is a ValueError before the
      chain runs.
    order: sampler="unipc" only: 2 or 3 (None: 3).
    z_1: the starting latent instead of a draw from the key: floating point of `shape`
      (float32 is used). With z_1 = the draw the key would make, the samples are the same.
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
                          known_mask=known_mask, rtol=rtol, atol=atol, spacing=spacing,
                          order=order, z_1=z_1)
  return _draw(eps_fn, gamma_fn, key, args, None, return_info)


def _draw(eps_fn: EpsFn, gamma_fn: GammaFn, key: Array, args: ChainArgs, times: Array | None,
          return_info: bool):
  """`sample` for checked arguments; times [T + 1] given, or None to compute them here.

  The uniform spacing runs with t = i / T computed in the loop (`run_chain`'s times=None).
  """
  shape, data, T, steps = args.shape, args.data, args.T, args.trajectory_steps
  batch = shape[0]
  key_init, key_steps, key_known, key_decode = jax.random.split(key, 4)
  gamma_1 = jnp.asarray(gamma_fn(jnp.ones((batch,), jnp.float32)), jnp.float32)
  _check_model_fns(eps_fn, gamma_1, shape)
  if args.z_1 is None:
    z_1 = jax.random.normal(key_init, shape, jnp.float32)
  else:
    z_1 = args.z_1

  if is_chain(args.sampler):
    if times is None:
      times = spacing_lib.step_times(gamma_fn, T, args.spacing)
      spacing_lib.check_times(gamma_fn, times, args.spacing)
    in_loop = None if args.spacing == "uniform_t" else times
    solver = make_solver(args.sampler, args.eta, args.order, T)
    if args.known is not None:
      solver = with_inpainting(solver, data.encode(args.known), args.known_mask, key_known, T)
    if steps:
      solver = with_trajectory(solver, steps, T, shape)
    z_0, gamma_0, state = run_chain(eps_fn, gamma_fn, solver, key_steps, z_1, gamma_1, T,
                                     in_loop)
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
    out += (trajectory_of(state, steps, times),)
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
# Model-level sampling.


def _model_gamma_fn(model, variables):
  return model_lib.pure_fns(model, variables)[1]


@functools.partial(jax.jit, static_argnames=("model", "T", "spacing"))
def _model_times(variables, *, model, T, spacing):
  return spacing_lib.step_times(_model_gamma_fn(model, variables), T, spacing)


@functools.partial(jax.jit, static_argnames=("model", "args", "guided", "return_info"))
def _sample_model_jit(variables, key, labels, guidance_weight, known, known_mask, z_1, times, *,
                      model, args, guided, return_info):
  eps_labels, gamma_fn = model_lib.pure_fns(model, variables)
  if guided:
    eps_fn = guided_eps_fn(eps_labels, labels, model.num_classes, guidance_weight)
  else:
    eps_fn = functools.partial(eps_labels, labels=labels)
  args = args._replace(known=known, known_mask=known_mask, z_1=z_1)
  return _draw(eps_fn, gamma_fn, key, args, times, return_info)


def sample_model(model, variables: Any, key: Array, num_samples: int, *, T: int | None = None,
                 sampler: str = "ancestral", eta: float | None = None,
                 labels: Array | None = None, guidance_weight: float = 0.0,
                 decode: str | None = None, trajectory_steps: int | Sequence[int] = (),
                 known: Array | None = None, known_mask: Array | None = None,
                 rtol: float | None = None, atol: float | None = None,
                 spacing: str | None = None, order: int | None = None,
                 z_1: Array | None = None, return_info: bool = False):
  """Samples a `model.VDM` (or any module with its `eps` / `gamma` / attributes interface).

  Uses `model.apply(variables, z, gamma, labels, method=model.eps)` (train=False: no dropout) and
  `model.apply(variables, t, method=model.gamma)`.

  Args:
    model: the module; needs image_shape, data (a data model; or vocab_size, its shorthand),
      num_classes, `eps` and `gamma`.
    variables: its variables (e.g. the EMA parameters {'params': ...}).
    key: PRNG key.
    num_samples: number of images B.
    T: number of sampling steps (network evaluations) of a chain sampler (any T for a
      continuous-time model; for a model trained in discrete time, its own T with
      spacing="uniform_t" matches the trained ELBO); None for "ode".
    sampler, eta, decode, trajectory_steps, known, known_mask, rtol, atol, spacing, order, z_1,
      return_info: as in `sample`. The step times are computed (and checked against the
      model's schedule, `spacing.check_times`) before the chain is traced, when the variables
      are concrete.
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

  Compiled once per (model, variables structure, num_samples, T, sampler, eta, order, spacing,
  decode, trajectory steps, tolerances, guided or not, labels / inpainting / z_1 present or
  not): repeated calls with the same settings reuse the compiled sampler.
  """
  if isinstance(num_samples, bool) or not isinstance(num_samples, (int, np.integer)) or \
      num_samples < 1:
    raise ValueError(f"num_samples must be an int >= 1, got {num_samples!r}.")
  num_samples = int(num_samples)
  args = check_chain_args((num_samples, *model.image_shape), likelihood.data_model_of(model), T=T,
                          sampler=sampler, eta=eta, decode=decode,
                          trajectory_steps=trajectory_steps, known=known, known_mask=known_mask,
                          rtol=rtol, atol=atol, spacing=spacing, order=order, z_1=z_1)
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
    labels = nets.null_labels(num_samples, num_classes)

  guided = not (isinstance(guidance_weight, numbers.Real) and guidance_weight == 0)
  if guided:
    if num_classes == 0:
      raise ValueError("classifier-free guidance needs a class-conditional model "
                       "(num_classes > 0).")
    if not labels_given:
      raise ValueError("classifier-free guidance needs labels (the classes to guide towards).")
    check_guidance_weight(guidance_weight)
    guidance_weight = jnp.asarray(guidance_weight, jnp.float32)
  else:
    guidance_weight = None

  times = None
  if is_chain(args.sampler):
    if args.spacing == "uniform_t":
      host = spacing_lib.step_times(None, args.T, args.spacing)
    else:
      times = host = _model_times(variables, model=model, T=args.T, spacing=args.spacing)
    spacing_lib.check_times(_model_gamma_fn(model, variables), host, args.spacing)
  static = args._replace(known=None, known_mask=None, z_1=None)
  return _sample_model_jit(variables, key, labels, guidance_weight, args.known, args.known_mask,
                           args.z_1, times, model=model, args=static, guided=guided,
                           return_info=bool(return_info))
