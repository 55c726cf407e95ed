"""The Fréchet distance between the Gaussians fitted to two sets of features (FID, Heusel et al.
2017, when the features are Inception-v3 pool activations)."""
from __future__ import annotations

import numpy as np

from vdm_jax.metrics.stats import FeatureStats


def _check_stats(name: str, stats) -> tuple[np.ndarray, np.ndarray]:
  """(mean [D], cov [D, D]) of `stats` in float64, or a ValueError saying what is wrong."""
  if not isinstance(stats, FeatureStats):
    raise TypeError(f"{name} must be a FeatureStats (from feature_stats or finalize_stats), got "
                    f"{type(stats).__name__}.")
  mean, cov = np.asarray(stats.mean, np.float64), np.asarray(stats.cov, np.float64)
  if mean.ndim != 1 or cov.shape != (mean.shape[0], mean.shape[0]):
    raise ValueError(f"{name} has mean {mean.shape} and cov {cov.shape}: they must be [D] and "
                     "[D, D] for one D.")
  if not (np.isfinite(mean).all() and np.isfinite(cov).all()):
    raise ValueError(f"{name} has non-finite mean or cov: its features held NaN or inf.")
  return mean, cov


def _psd_sqrt(cov: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root of symmetric `cov`, from its eigendecomposition, with the
  (rounding-level) negative eigenvalues of a near-singular covariance clipped to 0."""
  w, v = np.linalg.eigh((cov + cov.T) / 2)
  return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
  """tr((S_a S_b)^(1/2)) for symmetric PSD S_a, S_b [D, D], real and accurate (see
  `frechet_distance`)."""
  root_a = _psd_sqrt(cov_a)
  inner = root_a @ cov_b @ root_a
  w = np.linalg.eigvalsh((inner + inner.T) / 2)
  return float(np.sum(np.sqrt(np.clip(w, 0.0, None))))


def frechet_distance(stats_a: FeatureStats, stats_b: FeatureStats) -> float:
  """Fréchet distance of N(mu_a, S_a) and N(mu_b, S_b), in squared feature units:

      |mu_a - mu_b|^2 + tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

  The trace term is computed without forming (S_a S_b)^(1/2). S_a S_b is not symmetric, so
  `scipy.linalg.sqrtm(S_a @ S_b)` goes through a complex Schur form: it can return complex
  parts (pure rounding, usually dropped by hand) and is inaccurate or fails when the
  covariances are singular or nearly so, as they are whenever N <= D or the features span a
  subspace. Instead, with R = S_a^(1/2) (symmetric, from an eigendecomposition of S_a with its
  rounding-level negative eigenvalues clipped to 0), R S_b R is symmetric PSD and has the
  eigenvalues of S_a S_b (similar matrices when S_a is invertible, the same nonzero ones
  otherwise), so

      tr((S_a S_b)^(1/2)) = sum_i sqrt(max(lambda_i(R S_b R), 0)),

  a real number from two symmetric eigendecompositions, stable for rank-deficient S_a or S_b.

  Args:
    stats_a, stats_b: FeatureStats of the same D (e.g. reference data and samples).

  Returns:
    The distance, a float >= 0 (rounding below 0, at most ~1e-12 of the traces, is clipped).
    Symmetric in its arguments to rounding. For rank-deficient covariances each zero
    eigenvalue of S_a S_b, computed as rounding noise of order eps, adds about sqrt(eps) of
    the scale to the trace term (1e-8 relative in tests/test_metrics.py). Memory and time: a
    few [D, D] float64 matrices and O(D^3) (several seconds for D = 2048 on 2 CPU cores).
  """
  mean_a, cov_a = _check_stats("stats_a", stats_a)
  mean_b, cov_b = _check_stats("stats_b", stats_b)
  if mean_a.shape != mean_b.shape:
    raise ValueError(f"stats_a has D={mean_a.shape[0]} features but stats_b has "
                     f"D={mean_b.shape[0]}: both must come from the same feature network.")
  diff = mean_a - mean_b
  distance = (diff @ diff + np.trace(cov_a) + np.trace(cov_b)
              - 2.0 * trace_sqrt_product(cov_a, cov_b))
  return max(float(distance), 0.0)
