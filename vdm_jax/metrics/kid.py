"""Kernel Inception Distance (Bińkowski, Sutherland, Arbel & Gretton 2018): the unbiased MMD^2
between two sets of features under a cubic polynomial kernel, averaged over random subsets."""
from __future__ import annotations

import numpy as np

from vdm_jax.metrics import _checks


def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
  """k(x, y) = (x . y / D + 1)^3 for rows x [n, D], y [m, D]: [n, m], float64."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
  """Unbiased MMD^2 of rows x [m, D], y [n, D] (m, n >= 2) under `polynomial_kernel`:

      sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (n (n - 1))
        - 2 sum_{i, j} k(x_i, y_j) / (m n).

  Unbiased, so it is negative at times when both sets come from one distribution.
  """
  m, n = x.shape[0], y.shape[0]
  k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
  within_x = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  within_y = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(within_x + within_y - 2.0 * k_xy.mean())


def kernel_inception_distance(features_a, features_b, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
  """KID of two feature sets: the unbiased MMD^2 (`mmd2_unbiased`, kernel (x . y / D + 1)^3) of
  `num_subsets` pairs of random subsets, one of each set, and its spread.

  Each subset has m = min(subset_size, N_a, N_b) rows drawn without replacement from its set,
  independently for each of the `num_subsets` pairs, with `numpy.random.default_rng(seed)`, so
  the result is deterministic for its seed.

  KID needs the features themselves, not only their mean and covariance: keep (or reload) both
  sets, e.g. 50,000 x 2048 float32 features are 400 MB per set. Memory beyond the inputs
  (which are not copied when float32 or float64): the two subsets as float64, 2 m D * 8 bytes,
  and three [m, m] float64 kernel matrices, 24 m^2 bytes (24 MB for m = 1000). Time:
  num_subsets * 3 m^2 D multiply-adds.

  Args:
    features_a, features_b: [N_a, D], [N_b, D] features (numpy or jax), N_a, N_b >= 2, finite.
    num_subsets: number of subset pairs (>= 1).
    subset_size: rows per subset before capping at N_a and N_b (>= 2).
    seed: seed of the subset draws.

  Returns:
    (mean, std): the mean of the subset estimates and their standard deviation (numpy's
    default ddof = 0, as torch-fidelity and clean-fid report it; 0 for one subset). The std is
    the spread of a single subset's estimate, not the standard error of the mean.
  """
  a = _checks.features("features_a", features_a, min_rows=2, why="the unbiased MMD^2")
  b = _checks.features("features_b", features_b, min_rows=2, why="the unbiased MMD^2")
  _checks.same_dim("features_a", a, "features_b", b)
  num_subsets = _checks.check_int("num_subsets", num_subsets, 1)
  subset_size = _checks.check_int("subset_size", subset_size, 2)
  seed = _checks.check_int("seed", seed, 0)
  m = min(subset_size, a.shape[0], b.shape[0])
  rng = np.random.default_rng(seed)
  estimates = np.empty(num_subsets)
  for s in range(num_subsets):
    rows_a = rng.choice(a.shape[0], size=m, replace=False)
    rows_b = rng.choice(b.shape[0], size=m, replace=False)
    estimates[s] = mmd2_unbiased(a[rows_a], b[rows_b])
  return float(estimates.mean()), float(estimates.std())
