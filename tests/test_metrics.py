"""vdm_jax.metrics against independent computations.

Statistics: numpy's mean and np.cov; streamed in uneven batches, merged in any order, over 2
devices and over 2 processes (tests/helpers_metrics_process.py), all equal to rounding.

Fréchet distance of sampled Gaussians against the closed form of the true Gaussians, within a
stated multiple of its sampling spread; against scipy.linalg.sqrtm on the same statistics;
rank-deficient covariances against the same features in coordinates of their subspace.

KID and precision/recall against direct loops and hand-computed cases.
"""
import itertools
import math
import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

import helpers_metrics_process as worker
from vdm_jax import metrics

REPO = Path(__file__).resolve().parents[1]


def _assert_stats_close(state, mean, cov, rtol=1e-9):
  """`state` (StatsState or FeatureStats) against a reference mean and covariance: rtol per
  element, with atol 1e-12 of the largest entry for entries near 0."""
  got = state if isinstance(state, metrics.FeatureStats) else metrics.finalize_stats(state)
  np.testing.assert_allclose(got.mean, mean, rtol=rtol, atol=1e-12 * np.abs(mean).max())
  np.testing.assert_allclose(got.cov, cov, rtol=rtol, atol=1e-12 * np.abs(cov).max())


def _features(n, d, seed, mean=0.0):
  rng = np.random.default_rng(seed)
  return mean + rng.normal(size=(n, d)) @ rng.normal(size=(d, d))


# ------------------------------------------------------------------------------- statistics

def test_feature_stats_are_numpy_mean_and_unbiased_cov():
  x = _features(300, 6, 0)
  s = metrics.feature_stats(x)
  assert s.count == 300 and s.mean.dtype == s.cov.dtype == np.float64
  np.testing.assert_allclose(s.mean, x.mean(axis=0), rtol=1e-12)
  np.testing.assert_allclose(s.cov, np.cov(x, rowvar=False), rtol=1e-12)   # N - 1
  np.testing.assert_array_equal(s.cov, s.cov.T)
  half = np.asarray(jnp.asarray(x, jnp.bfloat16))            # jax outputs in bfloat16 too
  np.testing.assert_allclose(metrics.feature_stats(half).cov,
                             np.cov(half.astype(np.float64), rowvar=False), rtol=1e-12)
  s32 = metrics.feature_stats(x.astype(np.float32))           # float32 in, float64 math
  np.testing.assert_allclose(s32.cov, np.cov(x.astype(np.float32).astype(np.float64),
                                             rowvar=False), rtol=1e-12)


@pytest.mark.parametrize("mean", [0.0, 1e3], ids=["centred", "large_mean"])
def test_seven_uneven_batches_equal_one_shot(mean):
  x = mean + np.random.default_rng(1).normal(size=(5000, 6))       # std 1
  reference = np.cov(x, rowvar=False)
  batches = np.split(x, [1, 3, 700, 701, 2000, 4999])               # 1, 2, 697, 1, ...
  assert len(batches) == 7
  state = metrics.init_stats(6)
  for b in batches:
    state = metrics.update_stats(state, b)
  assert state.count == 5000
  _assert_stats_close(state, x.mean(axis=0), reference)
  _assert_stats_close(metrics.feature_stats(x), x.mean(axis=0), reference)
  if mean:
    # The test can fail: the uncentred one-pass formula misses the same 1e-9 by cancellation.
    total = x.sum(axis=0)
    naive = (x.T @ x - np.outer(total, total) / 5000) / 4999
    assert np.abs(naive - reference).max() > 1e-9 * np.abs(reference).max()


def test_merge_is_associative_and_order_independent():
  x = _features(900, 4, 2, mean=50.0)
  parts = [metrics.update_stats(metrics.init_stats(4), p) for p in np.split(x, [100, 433])]
  results = [metrics.merge(metrics.merge(parts[0], parts[1]), parts[2]),
             metrics.merge(parts[0], metrics.merge(parts[1], parts[2]))]
  results += [metrics.merge(metrics.merge(parts[i], parts[j]), parts[k])
              for i, j, k in itertools.permutations(range(3))]
  for r in results:
    assert r.count == 900
    np.testing.assert_allclose(r.mean, results[0].mean, rtol=1e-14)
    np.testing.assert_allclose(r.m2, results[0].m2, rtol=1e-12)
  _assert_stats_close(results[0], x.mean(axis=0), np.cov(x, rowvar=False))
  empty = metrics.init_stats(4)
  assert metrics.merge(empty, parts[0]) is parts[0] and metrics.merge(parts[0], empty) is parts[0]


def test_two_devices_give_the_numbers_of_one():
  x = _features(512, 8, 3, mean=-20.0).astype(np.float32)
  mesh = Mesh(np.asarray(jax.devices()[:2]), ("data",))
  sharded = jax.device_put(x, NamedSharding(mesh, P("data", None)))
  per_device = [metrics.update_stats(metrics.init_stats(8), s.data)
                for s in sharded.addressable_shards]
  assert [s.count for s in per_device] == [256, 256]
  merged = metrics.merge(*per_device)
  reference = metrics.feature_stats(x)
  _assert_stats_close(merged, reference.mean, reference.cov)
  _assert_stats_close(metrics.update_stats(metrics.init_stats(8), sharded), reference.mean,
                      reference.cov)
  state = metrics.update_stats(metrics.init_stats(8), x)
  assert metrics.gather_merge(state) is state                        # one process: a no-op


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def test_two_processes_give_the_numbers_of_one(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS="--xla_force_host_platform_device_count=2 "
                       "--xla_backend_optimization_level=0")
  port = _free_port()
  outs = [tmp_path / f"process_{i}.npz" for i in range(2)]
  procs = [subprocess.Popen([sys.executable, str(REPO / "tests" / "helpers_metrics_process.py"),
                             str(port), str(i), str(outs[i])], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for i in range(2)]
  for p in procs:
    _, err = p.communicate(timeout=180)
    assert p.returncode == 0, f"exit {p.returncode}\n{err[-4000:]}"
  got = [dict(np.load(o)) for o in outs]
  for key in got[0]:                                   # the same numbers on both processes
    np.testing.assert_array_equal(got[0][key], got[1][key])
  x = worker.all_features()
  for prefix, rows in (("host", x), ("global", x[:worker.GLOBAL_ROWS].astype(np.float32))):
    state = metrics.StatsState(int(got[0][f"{prefix}_count"]), got[0][f"{prefix}_mean"],
                               got[0][f"{prefix}_m2"])
    assert state.count == len(rows)
    reference = metrics.feature_stats(rows)
    _assert_stats_close(state, reference.mean, reference.cov)


# --------------------------------------------------------------------------- Fréchet distance

def _fd_scipy(a, b):
  """The textbook route: the real part of scipy's sqrtm of the (non-symmetric) product."""
  root = scipy.linalg.sqrtm(a.cov @ b.cov)
  d = a.mean - b.mean
  return d @ d + np.trace(a.cov) + np.trace(b.cov) - 2 * np.trace(np.real(root))


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form():
  # Diagonal covariances commute: FD = |mu_a - mu_b|^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
  n = 20000
  mu_a, mu_b = np.array([0.0, 1.0, -1.0, 2.0]), np.array([0.5, 1.0, 0.0, 2.0])
  var_a, var_b = np.array([1.0, 4.0, 0.25, 2.0]), np.array([2.0, 1.0, 0.25, 0.5])
  closed_form = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(var_a) - np.sqrt(var_b)) ** 2)
  rng = np.random.default_rng(10)
  a = mu_a + np.sqrt(var_a) * rng.normal(size=(n, 4))
  b = mu_b + np.sqrt(var_b) * rng.normal(size=(n, 4))
  fd = metrics.frechet_distance(metrics.feature_stats(a), metrics.feature_stats(b))
  # Spread of the estimate (delta method): var = 4 sum_i dmu_i^2 (a_i + b_i) / n
  # + sum_i 2 [(1 - sqrt(b_i/a_i))^2 a_i^2 + (1 - sqrt(a_i/b_i))^2 b_i^2] / n = 0.030^2
  # (0.033 measured over 200 seeds, bias -0.002): 0.15 is ~5 standard deviations.
  assert abs(fd - closed_form) < 0.15, (fd, closed_form)


def test_frechet_distance_of_correlated_gaussians_is_sqrtm_of_the_true_covariances():
  n, d = 20000, 6
  r = np.random.default_rng(123)
  m_a, m_b = r.normal(size=(d, d)), r.normal(size=(d, d))
  cov_a, cov_b = m_a @ m_a.T / d + 0.1 * np.eye(d), m_b @ m_b.T / d + 0.1 * np.eye(d)
  mu_a, mu_b = r.normal(size=d), r.normal(size=d)
  # The true covariances are well conditioned, where sqrtm of the product is reliable.
  closed_form = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b)
                 - 2 * np.trace(np.real(scipy.linalg.sqrtm(cov_a @ cov_b))))
  rng = np.random.default_rng(11)
  a = mu_a + rng.normal(size=(n, d)) @ np.linalg.cholesky(cov_a).T
  b = mu_b + rng.normal(size=(n, d)) @ np.linalg.cholesky(cov_b).T
  fd = metrics.frechet_distance(metrics.feature_stats(a), metrics.feature_stats(b))
  # Spread measured over 200 seeds: std 0.098 (bias -0.002) around 19.71; 0.45 is ~4.6 std.
  assert abs(fd - closed_form) < 0.45, (fd, closed_form)


def test_frechet_distance_is_zero_for_identical_stats_and_symmetric():
  a = metrics.feature_stats(_features(400, 8, 4, mean=3.0))
  b = metrics.feature_stats(_features(300, 8, 5))
  assert metrics.frechet_distance(a, a) < 1e-10
  assert isinstance(metrics.frechet_distance(a, b), float)
  assert metrics.frechet_distance(a, b) == pytest.approx(metrics.frechet_distance(b, a),
                                                         rel=1e-12)
  assert metrics.frechet_distance(a, b) == pytest.approx(_fd_scipy(a, b), rel=1e-6)


def test_frechet_distance_of_rank_deficient_covariances():
  # Features in a 3-dim subspace of D = 8: both covariances have rank 3, S_a S_b has five
  # zero eigenvalues, where sqrtm of the product has no reliable answer (a square root of a
  # singular matrix need not exist; rounding gives complex parts of order sqrt(eps)). The FD
  # is invariant under the isometry z -> Q z, so the same features in the subspace's
  # coordinates, with full-rank 3 x 3 covariances, give a safe reference through sqrtm.
  rng = np.random.default_rng(6)
  q, _ = np.linalg.qr(rng.normal(size=(8, 3)))
  z_a = rng.normal(size=(500, 3)) * np.array([1.0, 2.0, 0.5])
  z_b = rng.normal(size=(400, 3)) @ rng.normal(size=(3, 3)) + 0.3
  a8, b8 = metrics.feature_stats(z_a @ q.T), metrics.feature_stats(z_b @ q.T)
  assert np.linalg.matrix_rank(a8.cov) == np.linalg.matrix_rank(b8.cov) == 3
  reference = _fd_scipy(metrics.feature_stats(z_a), metrics.feature_stats(z_b))
  assert metrics.frechet_distance(a8, b8) == pytest.approx(reference, rel=1e-6)
  assert metrics.frechet_distance(b8, a8) == pytest.approx(reference, rel=1e-6)
  assert metrics.frechet_distance(a8, a8) < 1e-6 * np.trace(a8.cov)
  # Fewer samples than dimensions (N = 5 < D = 8): a real, finite, non-negative number.
  few = metrics.feature_stats(_features(5, 8, 7))
  assert math.isfinite(metrics.frechet_distance(few, b8)) and metrics.frechet_distance(few,
                                                                                      b8) > 0


# ------------------------------------------------------------------------------------------ KID

def _mmd2_loops(x, y):
  """The unbiased MMD^2 with k(u, v) = (u.v / D + 1)^3, written as plain sums over pairs."""
  def k(u, v):
    return (float(np.dot(u, v)) / len(u) + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kid_matches_the_unbiased_mmd2_written_out():
  rng = np.random.default_rng(20)
  x, y = rng.normal(size=(9, 5)), 0.5 + rng.normal(size=(7, 5))
  assert metrics.mmd2_unbiased(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-12)
  # Subsets of the whole sets are permutations, under which MMD^2 does not change.
  mean, std = metrics.kernel_inception_distance(x[:7], y, subset_size=50, num_subsets=5)
  assert mean == pytest.approx(_mmd2_loops(x[:7], y), rel=1e-12) and std < 1e-12


def test_kid_of_one_distribution_is_near_zero_and_of_two_is_large():
  rng = np.random.default_rng(21)
  a, b = rng.normal(size=(2000, 16)), rng.normal(size=(2000, 16))
  mean, std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
  assert std > 0 and abs(mean) < 3 * std, (mean, std)
  far_mean, far_std = metrics.kernel_inception_distance(a, b + 1.0, num_subsets=20,
                                                        subset_size=500)
  assert far_mean > 1.0 and far_mean > 20 * far_std and far_mean > 100 * abs(mean)


def test_kid_is_deterministic_for_its_seed():
  rng = np.random.default_rng(22)
  a, b = rng.normal(size=(300, 4)), rng.normal(size=(200, 4))
  kwargs = dict(num_subsets=4, subset_size=50)
  assert (metrics.kernel_inception_distance(a, b, seed=3, **kwargs)
          == metrics.kernel_inception_distance(a, b, seed=3, **kwargs))
  assert (metrics.kernel_inception_distance(a, b, seed=3, **kwargs)
          != metrics.kernel_inception_distance(a, b, seed=4, **kwargs))


# ---------------------------------------------------------------------------- precision/recall

def test_precision_recall_of_a_set_against_itself_and_a_far_cluster():
  x = np.random.default_rng(30).normal(size=(200, 10))
  assert metrics.precision_recall(x, x) == (1.0, 1.0)
  with_duplicates = np.concatenate([x[:50]] * 4)      # each point 4 times: radius 0 for k = 3
  assert metrics.precision_recall(with_duplicates, with_duplicates, batch_size=33) == (1.0, 1.0)
  assert metrics.precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_of_points_on_a_line_by_hand():
  # k = 1. Real 0, 1, 2, 3, 10: radii 1, 1, 1, 1, 7. Fake 0.5, 20, 21, 4: radii 3.5, 1, 1, 3.5.
  # Precision: 0.5 (in the ball of 0) and 4 (on the sphere of 3) of 4 fakes: 0.5.
  # Recall: 0, 1, 2, 3 lie in the ball of 0.5 (radius 3.5); 10 lies in no fake ball: 0.8.
  real = np.array([0.0, 1.0, 2.0, 3.0, 10.0])[:, None]
  fake = np.array([0.5, 20.0, 21.0, 4.0])[:, None]
  for batch_size in (1, 2, 256):
    assert metrics.precision_recall(real, fake, k=1, batch_size=batch_size) == (0.5, 0.8)
  # k = 2: real radii 2, 1, 1, 2, 8, fake radii 19.5, 16, 17, 16. Precision: still 0.5 and 4
  # (20 is 10 from 10, beyond 8). Recall: every real point lies in the ball of 0.5.
  assert metrics.precision_recall(real, fake, k=2) == (0.5, 1.0)


def test_precision_recall_matches_brute_force():
  rng = np.random.default_rng(31)
  real, fake = rng.normal(size=(150, 3)), 0.7 + 1.3 * rng.normal(size=(120, 3))

  def radii(s):
    d = np.linalg.norm(s[:, None] - s[None], axis=-1)
    return np.sort(d, axis=1)[:, 3]                   # index 0 is the point itself

  def covered(points, centres):
    d = np.linalg.norm(points[:, None] - centres[None], axis=-1)
    return np.mean(np.any(d <= radii(centres)[None], axis=1))

  assert metrics.precision_recall(real, fake, batch_size=37) == pytest.approx(
      (covered(fake, real), covered(real, fake)), abs=0)


# ---------------------------------------------------------------------------------- bad input

def test_bad_input_gives_clear_errors():
  x, y = _features(20, 4, 40), _features(20, 5, 41)
  with pytest.raises(ValueError, match="same feature network"):
    metrics.frechet_distance(metrics.feature_stats(x), metrics.feature_stats(y))
  with pytest.raises(ValueError, match="same feature network"):
    metrics.kernel_inception_distance(x, y)
  with pytest.raises(ValueError, match="same feature network"):
    metrics.precision_recall(x, y)
  with pytest.raises(ValueError, match="D=5 columns but the state was made for D=4"):
    metrics.update_stats(metrics.init_stats(4), y)
  with pytest.raises(ValueError, match="same feature layer"):
    metrics.merge(metrics.init_stats(4), metrics.init_stats(5))
  with pytest.raises(ValueError, match="1 samples, but the covariance needs at least 2"):
    metrics.feature_stats(x[:1])
  with pytest.raises(ValueError, match="needs at least 2 samples, the state has 1"):
    metrics.finalize_stats(metrics.update_stats(metrics.init_stats(4), x[:1]))
  with pytest.raises(ValueError, match=r"3 samples, but the k-th nearest .*\(k=3\) needs at "
                                       r"least 4"):
    metrics.precision_recall(x, x[:3])
  with pytest.raises(ValueError, match="at least 2"):
    metrics.kernel_inception_distance(x[:1], x)
  with pytest.raises(ValueError, match=r"shape \[N, D\]"):
    metrics.feature_stats(x[0])
  bad = x.copy()
  bad[7, 2] = np.nan
  for fn in (metrics.feature_stats, lambda f: metrics.update_stats(metrics.init_stats(4), f),
             lambda f: metrics.kernel_inception_distance(x, f),
             lambda f: metrics.precision_recall(f, x)):
    with pytest.raises(ValueError, match="non-finite values .*first in row 7"):
      fn(bad)
  bad[7, 2] = np.inf
  with pytest.raises(ValueError, match="non-finite"):
    metrics.feature_stats(bad)
  with pytest.raises(ValueError, match="must hold real numbers, got dtype complex"):
    metrics.feature_stats(x.astype(np.complex128))
  with pytest.raises(ValueError, match="non-finite mean or cov"):
    s = metrics.feature_stats(x)
    metrics.frechet_distance(s._replace(cov=s.cov * np.nan), s)
  with pytest.raises(TypeError, match="FeatureStats"):
    metrics.frechet_distance(metrics.update_stats(metrics.init_stats(4), x),
                             metrics.feature_stats(x))
  for kwargs in (dict(num_subsets=0), dict(subset_size=1), dict(seed=-1)):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an int"):
      metrics.kernel_inception_distance(x, x, **kwargs)
  for kwargs in (dict(k=0), dict(batch_size=0), dict(k=2.0)):
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} must be an int"):
      metrics.precision_recall(x, x, **kwargs)
  with pytest.raises(ValueError, match="dim must be an int >= 1"):
    metrics.init_stats(0)
