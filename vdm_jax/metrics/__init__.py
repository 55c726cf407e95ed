"""Sample-quality metrics on features: FID, KID and improved precision/recall.

Every metric works on features [N, D], one row per image, from any feature network: a function
images -> features that you supply. Host math is numpy in float64; nothing here trains, samples
or downloads.

    from vdm_jax import metrics

    metrics.feature_stats(features)                  # FeatureStats(mean, cov, count)
    metrics.frechet_distance(stats_a, stats_b)       # FID, from statistics only
    metrics.kernel_inception_distance(feats_a, feats_b)     # (mean, std), needs features
    metrics.precision_recall(real_feats, fake_feats, k=3)   # (precision, recall)

Plugging in a feature network
-----------------------------
Any jittable `feature_fn(images) -> [B, D]` will do. For FID on CIFAR-10 that is an
Inception-v3 up to its 2048-d pool layer, e.g. your own Flax port with weights you load
yourself (none ships with this package, and nothing is fetched)::

    @jax.jit
    def feature_fn(images):                  # images [B, 32, 32, 3] in the model's range
      x = (images + 1.0) * 127.5             # the range and resizing your network was
      x = jax.image.resize(x, (x.shape[0], 299, 299, 3), "bilinear")   # trained with
      return inception.apply(inception_params, x)                    # [B, 2048]

FID values are comparable with published ones only for the same network weights, the same
resizing and the same reference set (e.g. the 50,000 CIFAR-10 training images, whose statistics
you compute once with the same `feature_fn` and keep: `np.savez(path, **stats._asdict())`,
`FeatureStats(**np.load(path))`).

Streaming over batches, devices and hosts
-----------------------------------------
50,000 samples need not sit in memory: accumulate Chan et al.'s float64 (count, mean, M2)
batch by batch (`vdm_jax.metrics.stats`), each batch of any size, sharded over this process's
devices or not; with several processes, each adds only its own rows, then `gather_merge`
combines all processes' states in process order (every process must call it)::

    state = metrics.init_stats(2048)
    for images in my_sample_batches():       # this process's share of the samples
      state = metrics.update_stats(state, feature_fn(images))
    stats = metrics.finalize_stats(metrics.gather_merge(state))
    fid = metrics.frechet_distance(reference_stats, stats)

A `jax.Array` of features spread over several processes may be passed as it is:
`update_stats` adds this process's addressable shards (rows copied on several devices once).
KID and precision/recall need the features themselves: keep them (float32, 400 MB for
50,000 x 2048) or a random subset (e.g. 10,000 per set, as in Kynkäänniemi et al.), gathered on
one host. Their docstrings give the memory they use.
"""
from vdm_jax.metrics.features import (FeatureNetwork, WeightsChecksumError, load_feature_network,
                                      load_weights_file)
from vdm_jax.metrics.frechet import frechet_distance, trace_sqrt_product
from vdm_jax.metrics.kid import kernel_inception_distance, mmd2_unbiased, polynomial_kernel
from vdm_jax.metrics.precision_recall import precision_recall
from vdm_jax.metrics.stats import (FeatureStats, StatsState, feature_stats, finalize_stats,
                                   gather_merge, init_stats, merge, update_stats)

__all__ = [
    "FeatureStats", "StatsState", "feature_stats", "init_stats", "update_stats", "merge",
    "gather_merge", "finalize_stats", "frechet_distance", "trace_sqrt_product",
    "kernel_inception_distance", "mmd2_unbiased", "polynomial_kernel", "precision_recall",
    "FeatureNetwork", "WeightsChecksumError", "load_feature_network", "load_weights_file",
]
