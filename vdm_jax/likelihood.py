"""Data models: how data enters the bound and leaves the sampler; the prior term; units.

A data model (`DataModel`) owns everything that depends on what the data are: the checks of
its dtype and values, the encoding into the space the diffusion runs in, the reconstruction
term -log p(x | z_0), decoding z_0 back to data, and what "bits per dimension" means. Two:

  * `Discrete(vocab_size=256, low=-1.0, high=1.0)`: integers k in [0, V) encoded at the bin
    centres low + (k + 1/2) (high - low) / V; the decoder is the factorised categorical
    p(x = k | z_0) with logits -(z_0 / alpha_0 - enc(k))^2 / 2 * exp(-gamma_0). The bound is on
    a probability: bits per dimension are >= 0. The default: `vocab_size=` arguments elsewhere
    are shorthand for `Discrete(vocab_size)` (`resolve`).
  * `Continuous()`: float data of any shape, used as given (scale it yourself); the decoder is
    p(x | z_0) = N(x; z_0 / alpha_0, sigma_0^2 / alpha_0^2 I) = N(x; z_0 / alpha_0, exp(gamma_0) I).
    The bound is on a density: bits per dimension may be negative and depend on the data's
    units.

Every other module takes a data model and calls these methods; none branches on the kind. All
losses here are in nats per example; `nats_to_bpd` converts to bits per dimension.
"""
from __future__ import annotations

import abc
import dataclasses
import math
import numbers
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import diffusion, schedules

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def _dtype_of(x):
  return x.dtype if hasattr(x, "dtype") else jnp.asarray(x).dtype


def _check_rank(x, name: str, what: str) -> None:
  if jnp.ndim(x) < 2:
    raise ValueError(
        f"{name} must have shape [batch, ...] with at least one data dimension ({what}), got "
        f"shape {jnp.shape(x)}.")


class DataModel(abc.ABC):
  """What every data model provides (see the module docstring); subclasses are frozen
  dataclasses, so they are hashable and can be static arguments of jitted functions and
  attributes of linen modules.

  Class attributes:
    kind: "discrete" or "continuous" (the config's `model.data`).
    decoders: the `decode` modes it accepts, its default first.
    dtype: the dtype of decoded data (and of zeros standing in for data, e.g. at init).
    bpd_meaning: one line for where bits per dimension are printed.
  """
  kind: ClassVar[str]
  decoders: ClassVar[tuple[str, ...]]
  dtype: ClassVar[np.dtype]
  bpd_meaning: ClassVar[str]

  def describe(self) -> str:
    """How to name this data model in messages, e.g. "Discrete(vocab_size=256, ...)"."""
    fields = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self))
    return f"{type(self).__name__}({fields})"

  def check(self, x, name: str = "x") -> None:
    """Checks data x [B, ...] given to a loss or sampler: dtype and rank always (known at trace
    time); the values (`check_values`) only when x is concrete, i.e. the call is eager (under
    jit, vmap or pmap reading them would need a host round trip per step)."""
    self._check_static(x, name)
    if not isinstance(x, jax.core.Tracer):
      self.check_values(x, name)

  @abc.abstractmethod
  def _check_static(self, x, name: str) -> None:
    """The checks known at trace time: dtype and rank."""

  @abc.abstractmethod
  def check_values(self, x, name: str = "x") -> None:
    """Host-side value check (numpy) for data pipelines; ValueError naming what was found."""

  @abc.abstractmethod
  def encode(self, x: Array) -> Array:
    """Data [B, ...] -> float32 of the same shape, the space the diffusion runs in."""

  @abc.abstractmethod
  def recon_loss(self, x: Array, z_0: Array, gamma_0: Array) -> Array:
    """-log p(x | z_0) summed over data dimensions: [B] nats. x is the data (not encoded)."""

  def check_decode(self, mode: str | None) -> str:
    """The decode mode to use: None -> the default (decoders[0]); else one of `decoders`."""
    if mode is None:
      return self.decoders[0]
    if mode not in self.decoders:
      raise ValueError(f"Unknown decode {mode!r} for {self.describe()}; choose one of "
                       f"{self.decoders}.")
    return mode

  @abc.abstractmethod
  def decode(self, z_0: Array, gamma_0: Array, *, key: Array | None = None,
             mode: str | None = None) -> Array:
    """z_0 [B, ...] -> data of the same shape under p(x | z_0) (`decoders` lists the modes;
    "sample" draws with `key`)."""

  @property
  def storage_dtype(self) -> np.dtype:
    """The smallest dtype that holds samples exactly, for files of samples."""
    return self.dtype

  def bits_per_dim(self, nats: Array, num_dims: int) -> Array:
    """Nats per example -> bits per dimension (see `bpd_meaning`)."""
    return nats_to_bpd(nats, num_dims)


def _z0_rescaled(z_0: Array, gamma_0: Array) -> tuple[Array, Array]:
  """(z_0 / alpha_0, gamma_0 broadcast against z_0): the decoders' mean and log-variance."""
  g = diffusion.expand_to(gamma_0, z_0)
  return z_0 / schedules.alpha(g), g


@dataclasses.dataclass(frozen=True)
class Discrete(DataModel):
  """Integers in [0, vocab_size) on the bin-centre grid in (low, high); categorical decoder.

  encode(k) = low + (k + 1/2) (high - low) / vocab_size. The defaults are the paper's 8-bit
  encoding in (-1, 1).
  """
  vocab_size: int = 256
  low: float = -1.0
  high: float = 1.0

  kind: ClassVar[str] = "discrete"
  decoders: ClassVar[tuple[str, ...]] = ("argmax", "sample")
  dtype: ClassVar[np.dtype] = np.dtype(np.int32)
  bpd_meaning: ClassVar[str] = "bits per dimension of a probability (>= 0)"

  def __post_init__(self):
    v = self.vocab_size
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 2:
      raise ValueError(f"vocab_size must be an int >= 2, got {v!r}.")
    object.__setattr__(self, "vocab_size", int(v))
    ok = all(isinstance(e, numbers.Real) and not isinstance(e, bool) and math.isfinite(e)
             for e in (self.low, self.high))
    if not ok or not self.low < self.high:
      raise ValueError(f"Discrete needs finite low < high (the grid's ends), got low="
                       f"{self.low!r}, high={self.high!r}.")
    object.__setattr__(self, "low", float(self.low))
    object.__setattr__(self, "high", float(self.high))

  @property
  def storage_dtype(self):
    return np.dtype(np.uint8 if self.vocab_size <= 256 else np.int32)

  def _check_static(self, x, name):
    dtype = _dtype_of(x)
    if not jnp.issubdtype(dtype, jnp.integer):
      raise TypeError(
          f"{self.describe()} takes integers in [0, {self.vocab_size}) (e.g. uint8 pixels), "
          f"but {name} has dtype {dtype}. Pass the raw integer data (the data model encodes "
          "it), or use likelihood.Continuous() for real-valued data.")
    _check_rank(x, name, "integers")

  def check_values(self, x, name="x"):
    x = np.asarray(x)
    if x.size and (x.min() < 0 or x.max() >= self.vocab_size):
      raise ValueError(
          f"{name}: data values must lie in [0, {self.vocab_size}), found min {x.min()} and "
          f"max {x.max()}. Quantise the data to vocab_size levels or set vocab_size to match "
          f"it (data model {self.describe()}).")

  def encode(self, x):
    return (x.astype(jnp.float32) + 0.5) * (self.high - self.low) / self.vocab_size + self.low

  def nearest(self, x: Array) -> Array:
    """Encoded-space values -> the index of the nearest bin centre in [0, V), int32."""
    idx = jnp.floor((x - self.low) * self.vocab_size / (self.high - self.low))
    return jnp.clip(idx, 0, self.vocab_size - 1).astype(jnp.int32)

  def decoder_logits(self, z_0: Array, gamma_0: Array) -> Array:
    """Logits of p(x | z_0): shape z_0.shape + (V,); logit_k = -(z0r - enc(k))^2 / 2 * exp(-gamma_0)."""
    z0r, g = _z0_rescaled(z_0, gamma_0)
    centres = self.encode(jnp.arange(self.vocab_size))
    return -0.5 * jnp.square(z0r[..., None] - centres) * jnp.exp(-g)[..., None]

  def recon_loss(self, x, z_0, gamma_0):
    logp = jax.nn.log_softmax(self.decoder_logits(z_0, gamma_0), axis=-1)
    logp_x = jnp.take_along_axis(logp, x.astype(jnp.int32)[..., None], axis=-1)[..., 0]
    return -diffusion.sum_data_axes(logp_x)

  def decode(self, z_0, gamma_0, *, key=None, mode=None):
    """"argmax": the most likely value per dimension, computed as the nearest bin centre of
    z_0 / alpha_0 (the decoder's argmax without materialising V logits per dimension);
    "sample": a categorical draw (memory z_0.shape + (V,) floats). int32."""
    mode = self.check_decode(mode)
    if mode == "argmax":
      return self.nearest(_z0_rescaled(z_0, gamma_0)[0])
    if key is None:
      raise ValueError("decode='sample' draws from the decoder: pass a PRNG key.")
    logits = self.decoder_logits(z_0, gamma_0)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class Continuous(DataModel):
  """Real-valued data of any shape, used as given; Gaussian decoder
  p(x | z_0) = N(x; z_0 / alpha_0, exp(gamma_0) I) (its variance is sigma_0^2 / alpha_0^2).

  The bound is on the density of x in the units it is given in: rescaling the data by c moves
  every per-dimension bound by log2(c) bits, and bits per dimension may be negative.
  """
  kind: ClassVar[str] = "continuous"
  decoders: ClassVar[tuple[str, ...]] = ("mean", "sample")
  dtype: ClassVar[np.dtype] = np.dtype(np.float32)
  bpd_meaning: ClassVar[str] = ("bits per dimension of a density (may be negative; depends on "
                                "the data's scale)")

  def _check_static(self, x, name):
    dtype = _dtype_of(x)
    if not jnp.issubdtype(dtype, jnp.floating):
      raise TypeError(
          f"Continuous() takes floating-point data, but {name} has dtype {dtype}. Convert it "
          "(e.g. x.astype(np.float32), scaled as you want it modelled), or use "
          "likelihood.Discrete(vocab_size) for integer data.")
    _check_rank(x, name, "floats")

  def check_values(self, x, name="x"):
    x = np.asarray(x)
    if x.size and not np.all(np.isfinite(x)):
      bad = int(np.size(x) - np.count_nonzero(np.isfinite(x)))
      raise ValueError(f"{name}: Continuous() needs finite data, found {bad} NaN or infinite "
                       "values. Remove or replace them before training.")

  def encode(self, x):
    return jnp.asarray(x, jnp.float32)

  def recon_loss(self, x, z_0, gamma_0):
    z0r, g = _z0_rescaled(z_0, gamma_0)
    nll = 0.5 * (jnp.square(self.encode(x) - z0r) * jnp.exp(-g) + g + _LOG_2PI)
    return diffusion.sum_data_axes(jnp.broadcast_to(nll, z_0.shape))

  def decode(self, z_0, gamma_0, *, key=None, mode=None):
    """"mean": z_0 / alpha_0, the decoder's mean; "sample": a draw
    z_0 / alpha_0 + exp(gamma_0 / 2) n, n ~ N(0, I). float32."""
    mode = self.check_decode(mode)
    z0r, g = _z0_rescaled(z_0, gamma_0)
    if mode == "mean":
      return z0r
    if key is None:
      raise ValueError("decode='sample' draws from the decoder: pass a PRNG key.")
    return z0r + jnp.exp(0.5 * g) * jax.random.normal(key, z_0.shape, jnp.float32)


DATA_KINDS = {cls.kind: cls for cls in (Discrete, Continuous)}


def resolve(data: DataModel | None = None, vocab_size: int | None = None) -> DataModel:
  """The data model of a call: `data`, or `Discrete(vocab_size)` (vocab_size: its shorthand),
  or `Discrete()` when neither is given. Both may be given only when they agree."""
  if data is None:
    return Discrete() if vocab_size is None else Discrete(vocab_size)
  if not isinstance(data, DataModel):
    raise TypeError(f"data must be a likelihood data model (likelihood.Discrete(...) or "
                    f"likelihood.Continuous()), got {data!r}.")
  if vocab_size is not None and getattr(data, "vocab_size", None) != vocab_size:
    raise ValueError(f"vocab_size={vocab_size!r} is the shorthand for data=Discrete(vocab_size)"
                     f", but data={data.describe()} was given too: pass one of them.")
  return data


def data_model_of(module) -> DataModel:
  """A model's data model: its `data` attribute, else `Discrete(module.vocab_size)` (modules
  that only have the vocab_size shorthand)."""
  data = getattr(module, "data", None)
  return data if data is not None else resolve(None, getattr(module, "vocab_size", None))


def make(kind: str, vocab_size: int = 256, low: float = -1.0, high: float = 1.0) -> DataModel:
  """The data model a config names: kind "discrete" (with vocab_size, low, high) or
  "continuous" (the grid settings do not apply)."""
  if kind not in DATA_KINDS:
    raise ValueError(f"Unknown data kind {kind!r}; choose one of {tuple(DATA_KINDS)}.")
  return Discrete(vocab_size, low, high) if kind == "discrete" else Continuous()


# --------------------------------------------------------------------------------------------
# The 8-bit shorthand: functions of (x_int, vocab_size) on the default grid, as
# Discrete(vocab_size)'s methods.


def check_inputs(x_int, vocab_size: int) -> None:
  """`Discrete(vocab_size).check(x_int)`: TypeError / ValueError on bad integer data."""
  Discrete(vocab_size).check(x_int, "x_int")


def check_range(x_int, vocab_size: int) -> None:
  """Host-side value check for data pipelines: every value in [0, vocab_size) (numpy, not traced)."""
  Discrete(vocab_size).check_values(x_int, "x_int")


def encode(x_int: Array, vocab_size: int = 256) -> Array:
  """Integers in [0, V) -> bin centres in (-1, 1), float32, same shape."""
  return Discrete(vocab_size).encode(x_int)


def decode(x: Array, vocab_size: int = 256) -> Array:
  """Continuous x -> nearest bin index in [0, V), int32, same shape (inverse of `encode`)."""
  return Discrete(vocab_size).nearest(x)


def decoder_logits(z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """Logits of the factorised discrete decoder p(x | z_0): shape z_0.shape + (V,)."""
  return Discrete(vocab_size).decoder_logits(z_0, gamma_0)


def decoder_log_probs(z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """log p(x = k | z_0) for every k: shape z_0.shape + (V,), normalised over the last axis."""
  return jax.nn.log_softmax(decoder_logits(z_0, gamma_0, vocab_size), axis=-1)


def recon_loss(x_int: Array, z_0: Array, gamma_0: Array, vocab_size: int = 256) -> Array:
  """-log p(x | z_0) summed over data dimensions: [B] nats (`Discrete(vocab_size)`)."""
  return Discrete(vocab_size).recon_loss(x_int, z_0, gamma_0)


# --------------------------------------------------------------------------------------------
# Terms that do not depend on the data model.


def prior_kl(x: Array, gamma_1: Array) -> Array:
  """KL(q(z_1 | x) || N(0, I)) summed over data dimensions: [B] nats. x is the encoded data.

  0.5 (alpha^2 x^2 + sigma^2 - log sigma^2 - 1) = 0.5 (alpha^2 (x^2 - 1) + softplus(-gamma)).
  """
  g = diffusion.expand_to(gamma_1, x)
  kl = 0.5 * (schedules.alpha_sq(g) * (jnp.square(x) - 1.0) + jax.nn.softplus(-g))
  return diffusion.sum_data_axes(jnp.broadcast_to(kl, x.shape))


def nats_to_bpd(nats: Array, num_dims: int) -> Array:
  """Nats per example -> bits per dimension."""
  return nats / (num_dims * math.log(2.0))
