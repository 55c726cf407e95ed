"""The sampler registry and the static argument checks of `sampling.sample` / `sampling.sample_model`.

A sampler of the reverse chain is a `Solver` factory registered in `SAMPLERS` with the etas,
orders and default spacing it takes. A one-step sampler can be given as a `ReverseStep`
factory of eta instead (`make_step`), which `chain_step` turns into a solver:

    def my_step(eta):
      def step(key, z_t, eps_hat, gamma_s, gamma_t):
        return ...                                          # z_s, float32 of z_t's shape
      return step
    SAMPLERS["mine"] = Sampler(make_step=my_step, default_eta=0.0, eta_range=(0.0, 1.0))

    SAMPLERS["mine_2"] = Sampler(make_step=None, default_eta=None, eta_range=None,
                                 make_solver=lambda eta, order, T: ..., default_spacing="logsnr")

after which `sample(..., sampler="mine")`, `sample_model` and `config.sampling.sampler="mine"`
use it. The one sampler that is not a chain, "ode" (the probability-flow ODE, `vdm_jax.ode`),
has neither factory: it takes rtol / atol instead of T, eta, order and spacing.

Both entry points go through `check_chain_args`, so they accept and reject the same values; the
config module uses `SAMPLERS` and `resolve_eta` so a config fails for the same reasons a call
would. Everything here runs on the host, once per trace, before any compute, and needs no model.

eta convention (`resolve_eta`): sampler="ancestral" always uses eta = 1 (any other eta is an
error); sampler="ddim" uses the given eta in [0, 1], or 0 for eta=None; the multistep solvers
and "ode" take none. order (`resolve_order`): "unipc" takes 2 or 3 (default 3); the others
take none. spacing (`resolve_spacing`): one of `spacing.SPACINGS`; default "uniform_t" for
ancestral / ddim (t = i / T), "logsnr" for the multistep solvers.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import likelihood, ode
from vdm_jax.sampling import multistep, spacing as spacing_lib
from vdm_jax.sampling.onestep import ReverseStep, ancestral_step, chain_step, ddim_step
from vdm_jax.sampling.protocol import Solver

Array = jax.Array

ODE = "ode"


# --------------------------------------------------------------------------------------------
# The registry.


class Sampler(NamedTuple):
  """A registered sampler.

  make_step: eta (float) -> `ReverseStep`, for a one-step sampler; or None.
  default_eta: the eta used for eta=None; None when the sampler takes no eta.
  eta_range: (low, high), the etas accepted (low == high: that eta only); None: no eta.
  make_solver: (eta, order, T) -> `Solver`, for any chain sampler; None: built from make_step
    (`chain_step`), or not a chain (both None: the probability-flow ODE).
  orders: the orders accepted (() takes none); default_order: the one used for order=None.
  default_spacing: the step spacing used for spacing=None (`spacing.SPACINGS`).
  """
  make_step: Callable[[float], ReverseStep] | None
  default_eta: float | None
  eta_range: tuple[float, float] | None
  make_solver: Callable[[float | None, int | None, int], Solver] | None = None
  orders: tuple[int, ...] = ()
  default_order: int | None = None
  default_spacing: str = "uniform_t"


SAMPLERS: dict[str, Sampler] = {
    "ancestral": Sampler(make_step=lambda eta: ancestral_step(), default_eta=1.0,
                         eta_range=(1.0, 1.0)),
    "ddim": Sampler(make_step=ddim_step, default_eta=0.0, eta_range=(0.0, 1.0)),
    "dpmpp_2m": Sampler(make_step=None, default_eta=None, eta_range=None,
                        make_solver=lambda eta, order, T: multistep.dpmpp_solver(2, T),
                        default_spacing="logsnr"),
    "dpmpp_3m": Sampler(make_step=None, default_eta=None, eta_range=None,
                        make_solver=lambda eta, order, T: multistep.dpmpp_solver(3, T),
                        default_spacing="logsnr"),
    "unipc": Sampler(make_step=None, default_eta=None, eta_range=None,
                     make_solver=lambda eta, order, T: multistep.unipc_solver(order, T),
                     orders=(2, 3), default_order=3, default_spacing="logsnr"),
    ODE: Sampler(make_step=None, default_eta=None, eta_range=None),
}


def is_chain(sampler: str) -> bool:
  """Whether `sampler` (a registered name) runs the T-step reverse chain (else: the ODE)."""
  rules = SAMPLERS[sampler]
  return rules.make_step is not None or rules.make_solver is not None


def make_solver(sampler: str, eta: float | None, order: int | None, T: int) -> Solver:
  """The `Solver` of a registered chain sampler, for resolved eta and order (`ChainArgs`)."""
  rules = SAMPLERS[sampler]
  if rules.make_solver is not None:
    return rules.make_solver(eta, order, T)
  return chain_step(rules.make_step(eta))


def _check_T(T) -> int:
  if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 1:
    raise ValueError(f"T must be an int >= 1 (the number of sampling steps), got {T!r}.")
  return int(T)


def resolve_eta(sampler: str, eta) -> float | None:
  """The eta a sampler uses (its `SAMPLERS` entry): ancestral -> 1 (only eta=None or 1
  accepted), ddim -> eta in [0, 1] or 0, ode -> None (only eta=None accepted)."""
  if sampler not in SAMPLERS:
    raise ValueError(f"Unknown sampler {sampler!r}; choose one of {tuple(SAMPLERS)}.")
  rules = SAMPLERS[sampler]
  if eta is not None:
    if isinstance(eta, jax.core.Tracer):
      raise TypeError("eta must be a Python number (it is static: eta = 0 skips the noise draws); "
                      "mark it static under jax.jit.")
    if isinstance(eta, bool) or not isinstance(eta, numbers.Real) or not math.isfinite(eta):
      raise ValueError(f"eta must be a number in [0, 1], got {eta!r}.")
    eta = float(eta)
  if rules.eta_range is None:
    if eta is not None:
      raise ValueError(f"sampler={sampler!r} takes no eta, got eta={eta}.")
    return None
  low, high = rules.eta_range
  if low == high:
    if eta is not None and eta != low:
      others = [name for name, s in SAMPLERS.items()
                if s.eta_range is not None and s.eta_range[0] < s.eta_range[1]]
      raise ValueError(f"sampler={sampler!r} always uses eta={low:g}, got eta={eta}; use "
                       f"sampler={' or '.join(map(repr, others))} for another eta.")
    return float(low)
  eta = float(rules.default_eta) if eta is None else eta
  if not low <= eta <= high:
    raise ValueError(f"sampler={sampler!r} needs eta in [{low:g}, {high:g}], got {eta}.")
  return eta


def resolve_tolerances(sampler: str, rtol, atol) -> tuple[float | None, float | None]:
  """(rtol, atol) of the ODE solver: for sampler="ode", None means `ode.RTOL` / `ode.ATOL`
  and given values must lie in (0, 1); the chain samplers take none (both must be None)."""
  if is_chain(sampler):
    if rtol is not None or atol is not None:
      raise ValueError(f"rtol / atol are the ODE solver's tolerances: sampler={sampler!r} runs T "
                       "fixed steps and takes none (use sampler='ode').")
    return None, None
  return ode.check_tolerance("rtol", rtol), ode.check_tolerance("atol", atol)


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
                       f"t_i to t_(i-1), t_i = i/T for the uniform spacing), got {steps!r}.")
  if len(set(steps)) != len(steps):
    raise ValueError(f"trajectory_steps has repeated steps: {steps!r}.")
  return tuple(sorted((int(i) for i in steps), reverse=True))


def resolve_order(sampler: str, order) -> int | None:
  """The order a sampler uses: one of its `Sampler.orders` (None: its default_order); None for
  a sampler that takes no order (order must then be None)."""
  rules = SAMPLERS[sampler]
  if not rules.orders:
    if order is not None:
      raise ValueError(f"sampler={sampler!r} takes no order, got order={order!r} (the orders "
                       "of 'dpmpp_2m' / 'dpmpp_3m' are in their names; 'unipc' takes one).")
    return None
  if order is None:
    return rules.default_order
  if isinstance(order, bool) or not isinstance(order, (int, np.integer)) or \
      int(order) not in rules.orders:
    raise ValueError(f"sampler={sampler!r} takes order in {rules.orders}, got {order!r}.")
  return int(order)


def resolve_spacing(sampler: str, spacing) -> str | None:
  """The step spacing of a chain sampler: one of `spacing.SPACINGS` (None: the sampler's
  default_spacing); None for sampler="ode" (spacing must then be None)."""
  if not is_chain(sampler):
    if spacing is not None:
      raise ValueError(f"spacing places the steps of a chain: sampler={sampler!r} chooses its "
                       f"own steps (adaptive), got spacing={spacing!r}.")
    return None
  if spacing is None:
    return SAMPLERS[sampler].default_spacing
  if not isinstance(spacing, str) or spacing not in spacing_lib.SPACINGS:
    raise ValueError(f"Unknown spacing {spacing!r}; choose one of {spacing_lib.SPACINGS}.")
  return spacing


def _check_z_1(shape, z_1):
  """z_1 of the sample shape in floating point, as float32; None stays None."""
  if z_1 is None:
    return None
  if not (hasattr(z_1, "shape") and hasattr(z_1, "dtype")):
    z_1 = np.asarray(z_1)
  if tuple(z_1.shape) != tuple(shape) or not jnp.issubdtype(z_1.dtype, jnp.floating):
    raise ValueError(f"z_1 must be the starting latent, floating point of the sample shape "
                     f"{tuple(shape)}; got {z_1.dtype} of shape {tuple(z_1.shape)}.")
  return jnp.asarray(z_1, jnp.float32)


def _no_steps(trajectory_steps) -> bool:
  """Whether trajectory_steps asks for no recording: None, 0 or an empty sequence."""
  if trajectory_steps is None:
    return True
  if isinstance(trajectory_steps, (int, np.integer)) and not isinstance(trajectory_steps, bool):
    return int(trajectory_steps) == 0
  return isinstance(trajectory_steps, Sequence) and len(trajectory_steps) == 0


def _check_known(shape, data: likelihood.DataModel, known, known_mask):
  if (known is None) != (known_mask is None):
    raise ValueError("inpainting needs both `known` (data of the sample shape) and `known_mask` "
                     "(bool).")
  if known is None:
    return None, None
  if tuple(jnp.shape(known)) != tuple(shape):
    raise ValueError(f"known must have the sample shape {tuple(shape)}, got "
                     f"{tuple(jnp.shape(known))}.")
  data.check(known, "known")
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
  return (jnp.asarray(known).astype(data.dtype),
          jnp.broadcast_to(jnp.asarray(known_mask), shape))


class ChainArgs(NamedTuple):
  """The checked arguments of one call of `sampling.sample` (`check_chain_args`).

  shape: the sample shape [B, ...] as a tuple of ints (rank >= 2).
  data: the data model (`likelihood.resolve`): it checks `known` and decodes z_0.
  T: int >= 1, the number of steps (network evaluations); None for sampler="ode".
  sampler: a key of `SAMPLERS`.
  eta: the resolved eta, a float in [0, 1] (`resolve_eta`); None for a sampler without one.
  decode: one of data.decoders ("argmax" / "sample" for discrete data, "mean" / "sample" for
    continuous data).
  trajectory_steps: recorded step indices in chain order (descending), () for none.
  known: data of `shape` in the data model's dtype, or None (no inpainting).
  known_mask: bool, broadcast to `shape`, or None.
  rtol, atol: the ODE solver's tolerances (floats in (0, 1)) for sampler="ode", else None.
  spacing: a name of `spacing.SPACINGS` for a chain sampler, None for "ode".
  order: the solver's order (`resolve_order`), None for samplers without one.
  z_1: the starting latent, float32 of `shape`, or None (drawn from the key).

  Everything but known / known_mask / z_1 is static (hashable): it fixes the compiled sampler.
  """
  shape: tuple[int, ...]
  data: likelihood.DataModel
  T: int | None
  sampler: str
  eta: float | None
  decode: str
  trajectory_steps: tuple[int, ...]
  known: Array | None
  known_mask: Array | None
  rtol: float | None = None
  atol: float | None = None
  spacing: str | None = None
  order: int | None = None
  z_1: Array | None = None


def check_chain_args(shape: Sequence[int], data: likelihood.DataModel | None = None, *,
                     vocab_size: int | None = None, T: int | None, sampler: str,
                     eta: float | None, decode: str | None,
                     trajectory_steps: int | Sequence[int], known: Array | None,
                     known_mask: Array | None, rtol: float | None = None,
                     atol: float | None = None, spacing: str | None = None,
                     order: int | None = None, z_1: Array | None = None) -> ChainArgs:
  """Checks and resolves the arguments of `sampling.sample` / `sampling.sample_model`.

  Each argument is described in `sampling.sample`. The chain samplers need T and take no
  rtol / atol; sampler="ode" takes rtol / atol and no T, eta, order, spacing, trajectory steps
  or inpainting. Inpainting needs a one-step solver (`Solver.one_step`; see
  `sampling.wrappers`).

  Raises ValueError / TypeError naming the argument; runs on the host, once per trace.
  """
  shape = tuple(int(d) for d in shape)
  if len(shape) < 2 or any(d < 1 for d in shape):
    raise ValueError(f"shape must be [batch, ...] with rank >= 2 and positive sizes, got {shape}.")
  data = likelihood.resolve(data, vocab_size)
  eta = resolve_eta(sampler, eta)
  rtol, atol = resolve_tolerances(sampler, rtol, atol)
  order = resolve_order(sampler, order)
  spacing = resolve_spacing(sampler, spacing)
  decode = data.check_decode(decode)
  z_1 = _check_z_1(shape, z_1)
  if is_chain(sampler):
    T = _check_T(T)
    steps = resolve_trajectory_steps(trajectory_steps, T)
    if (known is not None or known_mask is not None) and \
        not make_solver(sampler, eta, order, T).one_step:
      raise ValueError(
          f"inpainting replaces the known region of z with fresh noise of q(z_s | x_known) at "
          f"every step; sampler={sampler!r} is a multistep solver that extrapolates its earlier "
          "predictions along one ODE path, which the fresh noise breaks at every step (its "
          "higher-order terms would amplify it). Use sampler='ancestral' or 'ddim'.")
    known, known_mask = _check_known(shape, data, known, known_mask)
  else:
    if T is not None:
      raise ValueError(f"sampler={sampler!r} chooses its own steps (adaptive, to rtol / atol): "
                       f"pass T=None, got T={T!r}.")
    if not _no_steps(trajectory_steps):
      raise ValueError(f"trajectory_steps are steps of the reverse chain: sampler={sampler!r} "
                       "records none.")
    if known is not None or known_mask is not None:
      raise ValueError(f"inpainting replaces the known region at every chain step: "
                       f"sampler={sampler!r} does not support it (use 'ancestral' or 'ddim').")
    steps = ()
  return ChainArgs(shape=shape, data=data, T=T, sampler=sampler, eta=eta,
                   decode=decode, trajectory_steps=steps, known=known, known_mask=known_mask,
                   rtol=rtol, atol=atol, spacing=spacing, order=order, z_1=z_1)
