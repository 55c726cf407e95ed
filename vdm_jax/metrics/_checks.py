"""Input checks shared by the metrics: one place for each check and its message."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

# Rows per block of the finiteness check, so it needs a bounded amount of extra memory
# (a boolean block of this many rows) however many features there are.
_FINITE_BLOCK_ROWS = 4096


def check_int(name: str, value, minimum: int) -> int:
  """`value` as an int, or ValueError unless it is an integer >= `minimum` (bools refused)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
    raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}.")
  return int(value)


def check_finite(name: str, array: np.ndarray) -> None:
  """ValueError naming the first non-finite row of `array` [N, ...], checked in row blocks."""
  for start in range(0, array.shape[0], _FINITE_BLOCK_ROWS):
    ok = np.isfinite(array[start:start + _FINITE_BLOCK_ROWS])
    if not ok.all():
      row = start + int(np.argwhere(~ok)[0][0])
      raise ValueError(
          f"{name} has non-finite values (NaN or inf), first in row {row}: drop or fix those "
          "samples before computing metrics (a diverged sampler or feature network?).")


def host_array(name: str, x) -> np.ndarray:
  """`x` as a numpy array on this host, without copying a numpy input; ValueError for a
  `jax.Array` spread over several processes, whose rows this process cannot read."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    raise ValueError(
        f"{name} is a jax.Array spread over several processes: gather it first (e.g. "
        "jax.experimental.multihost_utils.process_allgather(x, tiled=True)) or pass this "
        "process's rows as a numpy array.")
  return np.asarray(x)


def features(name: str, x, *, min_rows: int, why: str, dtype=None) -> np.ndarray:
  """Checked features [N, D]: a 2-D real array with N >= `min_rows` (`why` says what needs
  them), D >= 1, all finite. Cast to `dtype` when given, else float32 and float64 stay as they
  are (no copy) and other real dtypes (bfloat16, float16, integers) become float64."""
  a = host_array(name, x)
  if a.ndim != 2:
    raise ValueError(f"{name} must be features of shape [N, D] (one row per sample), got shape "
                     f"{a.shape}: flatten each sample's features to one row.")
  # jnp.issubdtype also knows bfloat16 and the other ml_dtypes floats of jax outputs.
  if not (jnp.issubdtype(a.dtype, jnp.floating) or jnp.issubdtype(a.dtype, jnp.integer)):
    raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}.")
  if a.shape[1] < 1:
    raise ValueError(f"{name} has shape {a.shape}: features need D >= 1 columns.")
  if a.shape[0] < min_rows:
    raise ValueError(f"{name} has {a.shape[0]} samples, but {why} needs at least {min_rows}.")
  if dtype is not None:
    a = a.astype(dtype, copy=False)
  elif a.dtype not in (np.float32, np.float64):
    a = a.astype(np.float64)
  check_finite(name, a)
  return a


def same_dim(name_a: str, a: np.ndarray, name_b: str, b: np.ndarray) -> None:
  """ValueError unless features `a` and `b` have the same number of columns D."""
  if a.shape[-1] != b.shape[-1]:
    raise ValueError(
        f"{name_a} has D={a.shape[-1]} features per sample but {name_b} has D={b.shape[-1]}: "
        "both sets must come from the same feature network (the same layer).")
