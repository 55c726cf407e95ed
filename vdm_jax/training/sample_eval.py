"""Sample quality of a model's parameters: FD, KID and precision/recall of its samples against
a split of the data, in a feature network's space (the training loop's sample-eval action and
`--mode=sample_eval`).

    evaluator = SampleEvaluator(spec, model)       # feature network + reference statistics
    result = evaluator(model, params, mesh, key)   # {"sample_eval/fd": ..., ...}

The samples are drawn over every device of every process in chunks (`sample_shards.generate`,
so memory is bounded by a chunk and the samples do not depend on the process layout). Each
process computes the features of its own rows and streams them into float64 statistics
(`metrics.update_stats`), merged over processes at the end (`metrics.gather_merge`): FD uses
every sample. KID and precision/recall need the features themselves: those of the samples with
id < max_features are kept (max_features x D float32; 5 MB for 10,000 x 128) and gathered on
every process, which all compute the same numbers, against as many reference rows.

The reference statistics (mean, covariance and the first max_features feature rows of the
reference split) are computed once and cached as `<cache_dir>/reference_stats/<key>.npz`,
keyed by the feature network's sha256, the dataset, the split, the split's content (sha256 of
its array) and max_features; a cache file that does not load, or whose recorded key differs,
is recomputed. Process 0 writes it (atomically); every process computes or reads it itself.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

from vdm_jax import data, latent, likelihood, logging_utils, metrics
from vdm_jax import model as model_lib
from vdm_jax.config import RunSpec, SampleEvalSpec, SamplingSpec
from vdm_jax.metrics import features as feature_networks
from vdm_jax.training import guidance, latent_runs, sample_shards

logger = logging.getLogger(__name__)

PREFIX = "sample_eval/"
# Images per feature-network call when computing the reference statistics.
_REFERENCE_BATCH = 1000


def default_cache_dir() -> Path:
  """$VDM_CACHE_DIR, else ~/.cache/vdm_jax."""
  return Path(os.environ.get("VDM_CACHE_DIR") or Path.home() / ".cache" / "vdm_jax")


def load_network(spec: SampleEvalSpec, dataset: str) -> feature_networks.FeatureNetwork:
  """The feature network `spec` names: its weights file with its sha256, or a shipped one
  ("auto": the one named like the dataset)."""
  if spec.feature_weights is not None:
    return metrics.load_weights_file(spec.feature_weights, spec.feature_sha256)
  name = dataset if spec.feature_network == "auto" else spec.feature_network
  if name not in feature_networks.SHIPPED:
    raise ValueError(
        f"config.sample_eval.feature_network='auto' finds no shipped feature network for "
        f"dataset {dataset!r} (shipped: {sorted(feature_networks.SHIPPED)}). Train one on your "
        "data with experiments/train_classifier.py and set config.sample_eval.feature_weights "
        "and feature_sha256 (from its result.json), or name a shipped network.")
  return metrics.load_feature_network(name)


def check_network_fits(net: feature_networks.FeatureNetwork, model: model_lib.VDM) -> None:
  """Raises ValueError unless `net` takes the model's samples: 8-bit integer images of its
  image shape (a latent model's: the pixels its autoencoder decodes them to)."""
  if isinstance(model, latent.LatentVDM):
    model_data, shape = latent_runs.decoded_data(model)
    what = f"decoded by its autoencoder to {model_data.describe()}"
  else:
    model_data, shape = model.data, tuple(model.image_shape)
    what = model_data.describe()
  takes_pixels = (isinstance(model_data, likelihood.Discrete) and model_data.vocab_size == 256)
  if not takes_pixels or shape != tuple(net.image_shape):
    raise ValueError(
        f"the feature network {net.name!r} takes {net.input_convention} of shape "
        f"{tuple(net.image_shape)}; this model's samples are {what} of shape "
        f"{shape}. Use a feature network trained on data like this model's "
        "(experiments/train_classifier.py, then config.sample_eval.feature_weights and "
        "feature_sha256), or turn sample evaluation off (config.sample_eval.every_steps=0).")


def _content_sha256(images: np.ndarray) -> str:
  h = hashlib.sha256(f"{images.dtype.str}{images.shape}".encode())
  h.update(np.ascontiguousarray(images).data)
  return h.hexdigest()


def _features(net, images: np.ndarray, batch: int = _REFERENCE_BATCH) -> np.ndarray:
  return np.concatenate([np.asarray(net.feature_fn(images[i:i + batch]))
                         for i in range(0, len(images), batch)])


def reference_stats(net: feature_networks.FeatureNetwork, dataset: str, split: str,
                    images: np.ndarray, max_features: int,
                    cache_dir: str | os.PathLike | None = None
                    ) -> tuple[metrics.FeatureStats, np.ndarray]:
  """(statistics of every image's features, features of the first max_features images) of a
  data split, from the cache when it holds them (see the module docstring), else computed
  (and written by process 0)."""
  key = {"feature_sha256": net.sha256, "dataset": dataset, "split": split,
         "content_sha256": _content_sha256(images), "max_features": str(max_features)}
  stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(dataset).name)[:40]
  digest = hashlib.sha256(repr(sorted(key.items())).encode()).hexdigest()[:20]
  path = (Path(cache_dir) if cache_dir else default_cache_dir()) / "reference_stats" / (
      f"{stem}_{split}_{digest}.npz")
  if path.exists():
    try:
      with np.load(path, allow_pickle=False) as f:
        if all(str(f[f"key/{k}"]) == v for k, v in key.items()):
          stats = metrics.FeatureStats(f["mean"], f["cov"], int(f["count"]))
          logger.info("reference statistics of %s/%s from %s", dataset, split, path)
          return stats, f["features"]
      logger.warning("%s holds statistics for another key: recomputing them.", path)
    except (OSError, ValueError, KeyError) as e:
      logger.warning("%s does not load (%s): recomputing it.", path, e)
  start = time.perf_counter()
  feats = _features(net, images)
  stats = metrics.feature_stats(feats)
  kept = feats[:max_features]
  logger.info("reference statistics of %s/%s (%d images) in %.1fs", dataset, split,
              len(images), time.perf_counter() - start)
  if jax.process_index() == 0:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + f".tmp{os.getpid()}.npz")
    np.savez(tmp, mean=stats.mean, cov=stats.cov, count=stats.count, features=kept,
             **{f"key/{k}": np.asarray(v) for k, v in key.items()})
    os.replace(tmp, path)
  return stats, kept


def _gather_rows(ids: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every process's (ids, rows) concatenated and ordered by id (a no-op for one process)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    counts = np.asarray(multihost_utils.process_allgather(np.int64(len(ids))))
    pad = int(counts.max()) - len(ids)
    ids_all = np.asarray(multihost_utils.process_allgather(np.pad(ids, (0, pad))))
    rows_all = np.asarray(multihost_utils.process_allgather(
        np.pad(rows, [(0, pad)] + [(0, 0)] * (rows.ndim - 1))))
    ids = np.concatenate([i[:c] for i, c in zip(ids_all, counts)])
    rows = np.concatenate([r[:c] for r, c in zip(rows_all, counts)])
  order = np.argsort(ids, kind="stable")
  return ids[order], rows[order]


def _sum_over_processes(values: np.ndarray) -> np.ndarray:
  if jax.process_count() == 1:
    return values
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(values)).sum(axis=0)


class SampleEvaluator:
  """The feature network and the reference statistics of one run, ready for `__call__`.

  Built before anything is sampled, so a network that does not fit the model, a missing split
  or a bad weights file fails at once (a training run builds it at its start).

  Args:
    spec: the run's spec (its sample_eval group and its data).
    model: the VDM whose samples will be evaluated (its data model and image shape are
      checked against the feature network's input).
    split_images: the reference split's images when already in memory (else read).
  """

  def __init__(self, spec: RunSpec, model: model_lib.VDM,
               split_images: np.ndarray | None = None):
    self.spec = spec.sample_eval
    self.net = load_network(self.spec, spec.data.name)
    check_network_fits(self.net, model)
    if split_images is None:
      split_images = data.load_arrays(spec.data.name, self.spec.reference_split,
                                      spec.data.data_dir)[0]
    self.reference, self.reference_features = reference_stats(
        self.net, spec.data.name, self.spec.reference_split, split_images,
        self.spec.max_features, self.spec.cache_dir)

  def compare_features(self, features: np.ndarray) -> dict[str, float]:
    """KID (mean and std over subsets) and precision/recall of `features` [n, D] against the
    first n reference rows: both sets of one size, since the k-NN radii of precision/recall
    depend on how many points a set has."""
    s = self.spec
    real = self.reference_features[:len(features)]
    kid, kid_std = metrics.kernel_inception_distance(
        real, features, num_subsets=s.kid_subsets, subset_size=s.kid_subset_size)
    precision, recall = metrics.precision_recall(real, features, k=s.pr_k)
    return {"kid": kid, "kid_std": kid_std, "precision": precision, "recall": recall}

  def __call__(self, model: model_lib.VDM, params, mesh: jax.sharding.Mesh, key: jax.Array,
               num_samples: int | None = None,
               sampling: SamplingSpec | None = None) -> dict[str, Any]:
    """Draws num_samples (default spec.num_samples) samples of `model` with `params` (its
    data model and image shape those the evaluator was built for) and compares them
    with the reference split; every process must call it. `sampling` (default
    spec.sampling()): how they are drawn, e.g. another sampler or T for a comparison; its
    num_samples is not used. Returns 'sample_eval/'-prefixed fd, kid, kid_std, precision,
    recall (and accuracy: the feature network's on the conditional samples, labels 0, 1, 2,
    ... cyclically), with the counts, settings and seconds."""
    s = self.spec
    n = s.num_samples if num_samples is None else int(num_samples)
    how = s.sampling() if sampling is None else sampling
    if n <= s.pr_k:
      raise ValueError(f"num_samples={n}: precision/recall (k={s.pr_k}) needs more than "
                       f"{s.pr_k} samples.")
    chunk_size = how.per_device_batch * mesh.devices.size
    model, params = guidance.guide(how, model, params, mesh)
    check_network_fits(self.net, model)
    chunks = sample_shards.generate(model, {"params": params}, how, key, mesh, n,
                                    per_device_batch=how.per_device_batch)
    state = metrics.init_stats(self.net.feature_dim)
    kept_ids, kept, correct = [], [], np.zeros(2, np.int64)   # (right, total)
    with_accuracy = bool(model.num_classes) and model.num_classes == self.net.num_classes
    start = time.perf_counter()
    for chunk in logging_utils.progress_iter(chunks, sample_shards.num_chunks(n, chunk_size),
                                             "sample_eval", "chunk"):
      logits, feats = (np.asarray(a) for a in self.net.apply(chunk.images.astype(np.uint8)))
      state = metrics.update_stats(state, feats)
      keep = chunk.index < s.max_features
      kept_ids.append(chunk.index[keep])
      kept.append(feats[keep])
      if with_accuracy:
        correct += (int(np.sum(logits.argmax(-1) == chunk.labels)), len(chunk.labels))
    sampled = time.perf_counter() - start
    stats = metrics.finalize_stats(metrics.gather_merge(state))
    _, kept = _gather_rows(np.concatenate(kept_ids), np.concatenate(kept))
    out = {"fd": metrics.frechet_distance(self.reference, stats),
           **self.compare_features(kept)}
    if with_accuracy:
      right, total = _sum_over_processes(correct)
      out["accuracy"] = right / total
    out.update({
        "num_samples": stats.count, "num_features": len(kept),
        "reference_count": self.reference.count, "reference_split": s.reference_split,
        "sampler": how.sampler, "T": how.T, "guidance_weight": how.guidance_weight,
        "feature_network": self.net.name, "feature_sha256": self.net.sha256,
        "sampling_seconds": sampled, "images_per_s": stats.count / sampled,
        "seconds": time.perf_counter() - start})
    return {PREFIX + k: v for k, v in out.items()}


def summary(step: int, result: dict) -> str:
  """One line for the log and the CLI."""
  r = {k[len(PREFIX):]: v for k, v in result.items() if k.startswith(PREFIX)}
  accuracy = f", class accuracy {r['accuracy']:.4f}" if "accuracy" in r else ""
  return (f"step {step}: FD {r['fd']:.3f}, KID {r['kid']:.5f} +- {r['kid_std']:.5f}, "
          f"precision {r['precision']:.4f}, recall {r['recall']:.4f}{accuracy} "
          f"({r['num_samples']} samples, {r['sampler']} T={r['T']}, against "
          f"{r['reference_count']} {r['reference_split']} images in the features of "
          f"{r['feature_network']!r}; {r['seconds']:.1f}s)")
