"""Improved precision and recall (Kynkäänniemi, Karras, Laine, Lehtinen & Aila 2019): how much of
the samples lies on the data manifold, and how much of the data manifold the samples cover, each
manifold the union of balls around its points reaching their k-th nearest neighbour."""
from __future__ import annotations

import numpy as np

from vdm_jax.metrics import _checks

# Squared distances below this fraction of |x|^2 + |y|^2 are taken as 0: that is below the
# float64 rounding of |x|^2 + |y|^2 - 2 x.y, so identical points are at distance exactly 0
# (duplicates then lie inside each other's balls, even of radius 0).
_ZERO_DISTANCE = 1e-12


def _sq_distances(x: np.ndarray, x_sq: np.ndarray, y: np.ndarray, y_sq: np.ndarray
                  ) -> np.ndarray:
  """Squared Euclidean distances [n, m] between rows x [n, D] and y [m, D] (float64), given
  their squared norms x_sq [n], y_sq [m]."""
  d = x @ y.T                     # in place from here: [n, m] float64 arrays are the memory
  d *= -2.0
  d += x_sq[:, None]
  d += y_sq[None, :]
  threshold = np.add.outer(x_sq, y_sq)
  threshold *= _ZERO_DISTANCE
  d[d <= threshold] = 0.0         # also clips rounding below 0
  return d


def _knn_sq_radii(x: np.ndarray, x_sq: np.ndarray, k: int, batch_size: int) -> np.ndarray:
  """Squared distance [N] of each row of x [N, D] to its k-th nearest other row."""
  radii = np.empty(x.shape[0])
  for start in range(0, x.shape[0], batch_size):
    stop = min(start + batch_size, x.shape[0])
    d = _sq_distances(x[start:stop], x_sq[start:stop], x, x_sq)
    rows = np.arange(stop - start)
    d[rows, start + rows] = 0.0      # the point itself: the smallest, so index k skips it
    radii[start:stop] = np.partition(d, k, axis=1)[:, k]
  return radii


def _fraction_covered(points: np.ndarray, points_sq: np.ndarray, centres: np.ndarray,
                      centres_sq: np.ndarray, sq_radii: np.ndarray, batch_size: int) -> float:
  """Fraction of `points` inside (or on) at least one ball around `centres` of radius^2
  `sq_radii`."""
  inside = 0
  for start in range(0, points.shape[0], batch_size):
    stop = min(start + batch_size, points.shape[0])
    d = _sq_distances(points[start:stop], points_sq[start:stop], centres, centres_sq)
    inside += int(np.count_nonzero((d <= sq_radii[None, :]).any(axis=1)))
  return inside / points.shape[0]


def precision_recall(real_features, fake_features, *, k: int = 3,
                     batch_size: int = 256) -> tuple[float, float]:
  """Improved precision and recall of `fake_features` against `real_features`.

  Each point's ball reaches its k-th nearest neighbour within its own set (the point itself
  excluded; Euclidean distance on the features). Then

      precision = fraction of fake points inside (or on) at least one real point's ball,
      recall = fraction of real points inside (or on) at least one fake point's ball.

  Both lie in [0, 1]; a set against itself gives exactly (1, 1). Distances are computed in
  float64 through |x|^2 + |y|^2 - 2 x.y, `batch_size` rows at a time against a whole set.

  Memory: float64 copies of both sets, (N_real + N_fake) D * 8 bytes (e.g. 1.6 GB for
  2 x 50,000 x 2048 features; 330 MB for 2 x 10,000), plus about 17 * batch_size * N bytes for
  one block of distances against N points, N = max(N_real, N_fake) (218 MB for the default
  batch_size = 256 and N = 50,000). Time: 4 N^2 D multiply-adds for N_real = N_fake = N.

  Args:
    real_features: [N_real, D] features of data (numpy or jax), finite, N_real > k.
    fake_features: [N_fake, D] features of samples, the same D, N_fake > k.
    k: the neighbour whose distance sets each ball's radius (3 in the paper).
    batch_size: rows per block of distances (>= 1); lower it to use less memory.

  Returns:
    (precision, recall), floats.
  """
  k = _checks.check_int("k", k, 1)
  batch_size = _checks.check_int("batch_size", batch_size, 1)
  why = f"the k-th nearest neighbour among the others (k={k})"
  real = _checks.features("real_features", real_features, min_rows=k + 1, why=why,
                          dtype=np.float64)
  fake = _checks.features("fake_features", fake_features, min_rows=k + 1, why=why,
                          dtype=np.float64)
  _checks.same_dim("real_features", real, "fake_features", fake)
  real_sq, fake_sq = np.einsum("ij,ij->i", real, real), np.einsum("ij,ij->i", fake, fake)
  real_radii = _knn_sq_radii(real, real_sq, k, batch_size)
  fake_radii = _knn_sq_radii(fake, fake_sq, k, batch_size)
  precision = _fraction_covered(fake, fake_sq, real, real_sq, real_radii, batch_size)
  recall = _fraction_covered(real, real_sq, fake, fake_sq, fake_radii, batch_size)
  return precision, recall
