"""The static argument checks of the reverse chain: what `sampling.sample` and
`sampling.sample_model` accept.

Both entry points go through `check_chain_args`, so they accept and reject the same values; the
config module uses `SAMPLERS` and `resolve_eta` so a config fails for the same reasons a call
would. Everything here runs on the host, once per trace, before any compute, and needs no model.

eta convention (`resolve_eta`; the update it scales is in `vdm_jax.sampling`): sampler="ancestral"
always uses eta = 1 (any other eta is an error); sampler="ddim" uses the given eta in [0, 1], or 0
for eta=None.
"""
from __future__ import annotations

import math
import numbers
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import likelihood

Array = jax.Array

SAMPLERS = ("ancestral", "ddim")
DECODERS = ("argmax", "sample")


def _check_T(T) -> int:
  if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
    raise ValueError(f"T must be an int >= 1 (the number of sampling steps), got {T!r}.")
  return int(T)


def resolve_eta(sampler: str, eta) -> float:
  """The eta a sampler uses: ancestral -> 1 (only eta=None or 1 accepted), ddim -> eta or 0."""
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {SAMPLERS}.")
  if eta is not None:
    if isinstance(eta, jax.core.Tracer):
      raise TypeError("eta must be a Python number (it is static: eta = 0 skips the noise draws); "
                      "mark it static under jax.jit.")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta):
      raise ValueError(f"eta must be a number in [0, 1], got {eta!r}.")
    eta = float(eta)
  if sampler == "ancestral":
    if eta is not None and eta != 1.0:
      raise ValueError(f"sampler='ancestral' always uses eta=1, got eta={eta}; use "
                       "sampler='ddim' for another eta.")
    return 1.0
  eta = 0.0 if eta is None else eta
  if not 0.0 <= eta <= 1.0:
    raise ValueError(f"sampler='ddim' needs eta in [0, 1], got {eta}.")
  return eta


def resolve_trajectory_steps(trajectory_steps, T: int) -> tuple[int, ...]:
  """Step indices to record, sorted in chain order (descending), from a tuple or a count.

  A count n picks n steps spaced evenly from T down to 1 (both ends included when n >= 2).
  """
  if trajectory_steps is None:
    return ()
  if isinstance(trajectory_steps, (int, np.integer)) and not isinstance(trajectory_steps, bool):
    n = int(trajectory_steps)
    if n < 0 or n > T:
      raise ValueError(f"trajectory_steps as a count must lie in [0, T={T}], got {n}.")
    if n == 0:
      return ()
    steps = np.unique(np.round(np.linspace(T, 1, n)).astype(int))
    return tuple(int(i) for i in steps[::-1])
  try:
    steps = tuple(trajectory_steps)
  except TypeError:
    raise TypeError(f"trajectory_steps must be a count or a tuple of step indices in [1, T], got "
                    f"{trajectory_steps!r}.") from None
  for i in steps:
    if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 1 <= i <= T:
      raise ValueError(f"trajectory_steps must hold step indices in [1, T={T}] (step i maps "
                       f"t = i/T to s = (i-1)/T), got {steps!r}.")
  if len(set(steps)) != len(steps):
    raise ValueError(f"trajectory_steps has repeated steps: {steps!r}.")
  return tuple(sorted((int(i) for i in steps), reverse=True))


def _check_known(shape, vocab_size, known, known_mask):
  if (known is None) != (known_mask is None):
    raise ValueError("inpainting needs both `known` (integer images) and `known_mask` (bool).")
  if known is None:
    return None, None
  if tuple(known.shape) != tuple(shape):
    raise ValueError(f"known must have the sample shape {tuple(shape)}, got {tuple(known.shape)}.")
  if not jnp.issubdtype(known.dtype, jnp.integer):
    raise TypeError(f"known must hold integers in [0, {vocab_size}), got dtype {known.dtype}.")
  if not isinstance(known, jax.core.Tracer):
    likelihood.check_range(known, vocab_size)
  if jnp.asarray(known_mask).dtype != jnp.bool_:
    raise TypeError(f"known_mask must be bool (True = known), got dtype "
                    f"{jnp.asarray(known_mask).dtype}.")
  try:
    out = jnp.broadcast_shapes(tuple(jnp.shape(known_mask)), tuple(shape))
  except ValueError:
    out = None
  if out != tuple(shape):
    raise ValueError(f"known_mask of shape {tuple(jnp.shape(known_mask))} does not broadcast to "
                     f"the sample shape {tuple(shape)}.")
  return known.astype(jnp.int32), jnp.broadcast_to(jnp.asarray(known_mask), shape)


class ChainArgs(NamedTuple):
  """The checked arguments of one reverse chain (`check_chain_args`).

  shape: the sample shape [B, ...] as a tuple of ints (rank >= 2).
  vocab_size: int >= 2, discrete values per dimension.
  T: int >= 1, the number of steps.
  sampler: "ancestral" or "ddim".
  eta: the resolved eta, a float in [0, 1] (`resolve_eta`).
  decode: "argmax" or "sample".
  trajectory_steps: recorded step indices in chain order (descending), () for none.
  known: int32 images of `shape`, or None (no inpainting).
  known_mask: bool, broadcast to `shape`, or None.

  Everything but known / known_mask is static (hashable): it fixes the compiled chain.
  """
  shape: tuple[int, ...]
  vocab_size: int
  T: int
  sampler: str
  eta: float
  decode: str
  trajectory_steps: tuple[int, ...]
  known: Array | None
  known_mask: Array | None


def check_chain_args(shape: Sequence[int], vocab_size: int, *, T: int, sampler: str,
                     eta: float | None, decode: str, trajectory_steps: int | Sequence[int],
                     known: Array | None, known_mask: Array | None) -> ChainArgs:
  """Checks and resolves the arguments of `sampling.sample` / `sampling.sample_model`.

  Each argument is described in `sampling.sample`.

  Raises ValueError / TypeError naming the argument; runs on the host, once per trace.
  """
  shape = tuple(int(d) for d in shape)
  if len(shape) < 2 or any(d < 1 for d in shape):
    raise ValueError(f"shape must be [batch, ...] with rank >= 2 and positive sizes, got {shape}.")
  T = _check_T(T)
  if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or \
      vocab_size < 2:
    raise ValueError(f"vocab_size must be an int >= 2, got {vocab_size!r}.")
  eta = resolve_eta(sampler, eta)
  if decode not in DECODERS:
    raise ValueError(f"Unknown decode {decode!r}; choose one of {DECODERS}.")
  steps = resolve_trajectory_steps(trajectory_steps, T)
  known, known_mask = _check_known(shape, vocab_size, known, known_mask)
  return ChainArgs(shape=shape, vocab_size=int(vocab_size), T=T, sampler=sampler, eta=eta,
                   decode=decode, trajectory_steps=steps, known=known, known_mask=known_mask)
