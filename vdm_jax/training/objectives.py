"""What the training loop trains: one `Objective` per kind of model, behind one small protocol.

The loop, the step, the checkpoints and the modes are the same for every kind; what differs is
the loss and its metrics, the evaluation and how they are logged:

    objective = objectives.of(model)          # DIFFUSION, NOISY_CLASSIFIER or AUTOENCODER
    loss, metrics = objective.loss_fn(model, params, batch, rng, train=True)
    result = objective.evaluate(model, ema_params, spec.eval, test_split, mesh, key)

`DIFFUSION` trains a `model.VDM` on its objective (the negative ELBO unless its weighting says
otherwise), logged in bits per dimension; `NOISY_CLASSIFIER` trains a
`noisy_classifier.NoisyClassifierModel` on the cross-entropy of p(y | z_t) along the forward
process, logged as accuracy, also per t-bin at eval; `AUTOENCODER` trains a
`latent.AutoencoderModel` (stage 1 of latent diffusion) on -log p(x | z) + beta KL, logged in
bits per dimension, with the PSNR of its reconstructions and the KL per latent dimension at eval;
`LATENT_DIFFUSION` trains a `latent.LatentVDM` (stage 2) on its latents, evaluated by the
pixel-space bound (`training.latent_runs`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import time
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import evaluation, latent, likelihood, parallel
from vdm_jax import noisy_classifier as noisy_classifier_lib
from vdm_jax.config import EvalSpec
from vdm_jax.training import actions, latent_runs

Array = jax.Array

# The classifier's accuracy at eval: per bin [j / n, (j + 1) / n) of t, one stratified t each.
NUM_T_BINS = 10


@dataclasses.dataclass(frozen=True)
class Objective:
  """What the loop needs of a kind of model.

  headline: the train metric shown on the progress bar ('train/bpd', 'train/accuracy').
  samples: whether the model is sampled (sample grids and sample quality).
  loss_fn(model, params, batch, rng, train) -> (scalar to minimise, {'train/...': scalar});
    'train/loss' is always among the metrics.
  evaluate(model, params, spec, test_split, mesh, key, method=...) -> {'eval/...': value}.
  train_line(record) / eval_line(result): the log lines.
  to_images(model, samples) -> uint8 images: what the samples look like as data (None: the
    samples are the data; a latent model decodes them).
  """
  headline: str
  samples: bool
  loss_fn: Callable
  evaluate: Callable
  train_line: Callable
  eval_line: Callable
  to_images: Callable | None = None


# -------------------------------------------------------------------------------- diffusion


def diffusion_loss_fn(model, params, batch: Mapping[str, Array], rng: Array,
                      train: bool = True) -> tuple[Array, dict]:
  """The diffusion model's training objective and its metrics for one batch.

  Args:
    model: the VDM module; `VDM.objective` gives the per-example objective (the negative ELBO
      unless the model's weighting / schedule_objective say otherwise) and the bound from the
      same draws.
    params: its 'params' collection.
    batch: 'image' [B, ...] (and 'label' int [B] for a class-conditional model).
    rng: key for this step; split into the model's 'sample' and 'dropout' streams.
    train: dropout (and label dropout) on.

  Returns:
    (objective, metrics): objective = the batch mean of the per-example objective in nats
    (what the gradient is taken of); metrics 'train/loss' (the same) and the bound in bits per
    dimension: 'train/bpd' and its terms 'train/recon_bpd', 'train/prior_bpd',
    'train/diffusion_bpd'.
  """
  k_sample, k_dropout = jax.random.split(rng)
  labels = batch["label"].astype(jnp.int32) if model.num_classes else None
  per_example, bound = model.apply({"params": params}, batch["image"], labels, train=train,
                                   rngs={"sample": k_sample, "dropout": k_dropout},
                                   method=model.objective)
  objective = jnp.mean(per_example)
  num_dims = math.prod(model.image_shape)
  bpd = lambda v: likelihood.nats_to_bpd(jnp.mean(v), num_dims)
  return objective, {
      "train/loss": objective,
      "train/bpd": bpd(bound.total),
      "train/recon_bpd": bpd(bound.recon),
      "train/prior_bpd": bpd(bound.prior),
      "train/diffusion_bpd": bpd(bound.diffusion),
  }


def _diffusion_train_line(r: dict) -> str:
  return (f"train bpd {r['train/bpd']:.4f} (recon {r['train/recon_bpd']:.4f} prior "
          f"{r['train/prior_bpd']:.4f} diffusion {r['train/diffusion_bpd']:.4f})")


def _diffusion_eval_line(r: dict) -> str:
  return (f"eval bpd {r['eval/bpd']:.4f} +- {r['eval/bpd_se']:.4f} (recon "
          f"{r['eval/recon_bpd']:.4f}, prior {r['eval/prior_bpd']:.4f}, diffusion "
          f"{r['eval/diffusion_bpd']:.4f}) on {r['eval/num_images']} test images in "
          f"{r['eval/seconds']:.1f}s; {r['eval/bpd_meaning']}")


# ------------------------------------------------------------------------- noisy classifier


def classifier_loss_fn(model, params, batch: Mapping[str, Array], rng: Array,
                       train: bool = True) -> tuple[Array, dict]:
  """The noisy classifier's cross-entropy (nats, batch mean) on z_t ~ q(z_t | x) at times drawn
  as the VDM loss draws them; metrics 'train/loss' and 'train/accuracy' (of the same draws)."""
  k_sample, k_dropout = jax.random.split(rng)
  loss, _, correct = model.apply({"params": params}, batch["image"],
                                 batch["label"].astype(jnp.int32), train=train,
                                 rngs={"sample": k_sample, "dropout": k_dropout},
                                 method=model.objective)
  objective = jnp.mean(loss)
  return objective, {"train/loss": objective,
                     "train/accuracy": jnp.mean(correct.astype(jnp.float32))}


@functools.partial(jax.jit, static_argnames=("model", "num_bins"))
def _classifier_eval_batch(variables, images, labels, key, *, model, num_bins):
  key_u, key_z = jax.random.split(key)
  u = jax.random.uniform(key_u, (num_bins, images.shape[0]), jnp.float32)
  t = (jnp.arange(num_bins, dtype=jnp.float32)[:, None] + u) / num_bins
  nll, correct = model.apply(variables, images, labels, t, key_z, method=model.at_times)
  return {"nll": nll.T, "correct": correct.T.astype(jnp.float32)}     # [B, n]


def evaluate_classifier(model, params, spec: EvalSpec, test_split: tuple[np.ndarray, np.ndarray],
                        mesh: jax.sharding.Mesh, key: Array, method: str = "elbo") -> dict:
  """The noisy classifier on the test split, per t-bin: each image at one stratified t in each
  of the NUM_T_BINS bins [j / n, (j + 1) / n) (a fresh z_t each).

  Returns 'eval/accuracy' and 'eval/loss' (cross-entropy, nats; both the mean over bins, i.e.
  over t ~ U(0, 1)), 'eval/accuracy_bin<j>' and 'eval/loss_bin<j>' per bin, 'eval/num_images',
  'eval/seconds'. spec's batch_size and max_batches apply; `method` is the diffusion
  objective's (a classifier has one evaluation).
  """
  del method
  start = time.perf_counter()
  sums = np.zeros((2, NUM_T_BINS), np.float64)   # (nll, correct) summed over real images
  count = 0
  for n, b in enumerate(actions.test_batches(spec, test_split, mesh)):
    mask = np.asarray(b["mask"], bool)
    device_batch = parallel.shard_batch({"image": b["image"], "label": b["label"]}, mesh)
    out = _classifier_eval_batch({"params": params}, device_batch["image"],
                                 device_batch["label"].astype(jnp.int32),
                                 jax.random.fold_in(key, n), model=model, num_bins=NUM_T_BINS)
    out, mask = evaluation.gather_batch(out, mask)
    sums += [np.asarray(out[k], np.float64)[mask].sum(axis=0) for k in ("nll", "correct")]
    count += int(mask.sum())
  if count == 0:
    raise ValueError("the classifier's evaluation got no real images.")
  loss, accuracy = sums / count
  result = {"eval/accuracy": float(accuracy.mean()), "eval/loss": float(loss.mean()),
            "eval/num_images": count}
  for j in range(NUM_T_BINS):
    result[f"eval/accuracy_bin{j}"] = float(accuracy[j])
    result[f"eval/loss_bin{j}"] = float(loss[j])
  result["eval/seconds"] = time.perf_counter() - start
  return result


def _classifier_train_line(r: dict) -> str:
  return f"train cross-entropy {r['train/loss']:.4f} nats, accuracy {r['train/accuracy']:.4f}"


def _classifier_eval_line(r: dict) -> str:
  bins = " ".join(f"{r[f'eval/accuracy_bin{j}']:.3f}" for j in range(NUM_T_BINS))
  return (f"eval accuracy {r['eval/accuracy']:.4f} (t ~ U(0, 1)), cross-entropy "
          f"{r['eval/loss']:.4f} nats on {r['eval/num_images']} test images; by t-bin of "
          f"1/{NUM_T_BINS}: {bins}; {r['eval/seconds']:.1f}s")


# ------------------------------------------------------------------------------ autoencoder


def autoencoder_loss_fn(model, params, batch: Mapping[str, Array], rng: Array,
                        train: bool = True) -> tuple[Array, dict]:
  """The autoencoder's loss -log p(x | z) + kl_weight KL(q(z | x) || N(0, I)) (nats, batch
  mean, one z ~ q(z | x) per image); metrics 'train/loss', its evidence bound (beta = 1) in
  bits per dimension 'train/bpd' and its parts 'train/decoder_bpd', 'train/kl_bpd'."""
  del train   # no dropout
  loss, terms = model.apply({"params": params}, batch["image"], rngs={"sample": rng},
                            method=model.objective)
  objective = jnp.mean(loss)
  bpd = lambda v: likelihood.nats_to_bpd(jnp.mean(v), math.prod(model.image_shape))
  return objective, {"train/loss": objective, "train/bpd": bpd(terms.decoder_nll + terms.kl),
                     "train/decoder_bpd": bpd(terms.decoder_nll), "train/kl_bpd": bpd(terms.kl)}


@functools.partial(jax.jit, static_argnames=("model",))
def _autoencoder_eval_batch(variables, images, key, *, model):
  mean, log_std = model.apply(variables, images, method=model.encode)
  z = latent.sample_latent(key, mean, log_std)
  recon = model.apply(variables, mean, method=model.decode)    # the decoder at the posterior mean
  err = (recon - images.astype(jnp.int32)).astype(jnp.float32)
  return {"decoder_nll": model.apply(variables, images, z, method=model.decoder_nll),
          "kl": latent.kl_to_standard_normal(mean, log_std),
          "sq_err": jnp.sum(jnp.square(err).reshape(err.shape[0], -1), axis=-1)}


def evaluate_autoencoder(model, params, spec: EvalSpec,
                         test_split: tuple[np.ndarray, np.ndarray], mesh: jax.sharding.Mesh,
                         key: Array, method: str = "elbo") -> dict:
  """The autoencoder on the test split (spec's batch_size and max_batches apply).

  Returns 'eval/bpd' (its evidence bound -log p(x | z) + KL, one z per image; bits per pixel
  dimension) with 'eval/bpd_se' (standard error over the images), 'eval/decoder_bpd' and
  'eval/kl_bpd' (its parts), 'eval/kl_per_latent_dim' (nats), 'eval/psnr' (dB, of the decoder's
  location at the posterior mean, rounded to the pixel bins, against the image; from the
  mean squared error over all test pixels), 'eval/latent_shape' (e.g. '7x7x4'), 'eval/num_images',
  'eval/seconds'. `method` is the diffusion objective's (an autoencoder has one evaluation).
  """
  del method
  start = time.perf_counter()
  parts: dict[str, list] = {"decoder_nll": [], "kl": [], "sq_err": []}
  for n, b in enumerate(actions.test_batches(spec, test_split, mesh)):
    mask = np.asarray(b["mask"], bool)
    images = parallel.shard_batch({"image": b["image"]}, mesh)["image"]
    out = _autoencoder_eval_batch({"params": params}, images, jax.random.fold_in(key, n),
                                  model=model)
    out, mask = evaluation.gather_batch(out, mask)
    for k in parts:
      parts[k].append(np.asarray(out[k], np.float64)[mask])
  nll, kl, sq_err = (np.concatenate(parts[k]) for k in ("decoder_nll", "kl", "sq_err"))
  if len(nll) == 0:
    raise ValueError("the autoencoder's evaluation got no real images.")
  num_dims, latent_dims = math.prod(model.image_shape), math.prod(model.latent_shape)
  bits = (nll + kl) / (num_dims * math.log(2.0))
  mse = float(np.mean(sq_err)) / num_dims
  vmax = model.data.vocab_size - 1
  bpd, bpd_se = actions.mean_and_se(bits)
  return {"eval/bpd": bpd, "eval/bpd_se": bpd_se,
          "eval/decoder_bpd": float(nll.mean() / (num_dims * math.log(2.0))),
          "eval/kl_bpd": float(kl.mean() / (num_dims * math.log(2.0))),
          "eval/kl_per_latent_dim": float(kl.mean() / latent_dims),
          "eval/psnr": float(10.0 * np.log10(vmax ** 2 / mse)) if mse > 0 else float("inf"),
          "eval/latent_shape": "x".join(map(str, model.latent_shape)), "eval/num_images": len(bits),
          "eval/seconds": time.perf_counter() - start}


def _autoencoder_train_line(r: dict) -> str:
  return (f"train bpd {r['train/bpd']:.4f} (decoder {r['train/decoder_bpd']:.4f}, kl "
          f"{r['train/kl_bpd']:.4f})")


def _autoencoder_eval_line(r: dict) -> str:
  return (f"eval bpd {r['eval/bpd']:.4f} +- {r['eval/bpd_se']:.4f} (decoder "
          f"{r['eval/decoder_bpd']:.4f}, kl {r['eval/kl_bpd']:.4f}; "
          f"{r['eval/kl_per_latent_dim']:.3f} nats per latent dimension of "
          f"{r['eval/latent_shape']}), PSNR {r['eval/psnr']:.2f} dB on "
          f"{r['eval/num_images']} test images in {r['eval/seconds']:.1f}s")


# ---------------------------------------------------------------------------------- registry


DIFFUSION = Objective("train/bpd", True, diffusion_loss_fn, actions.evaluate_params,
                      _diffusion_train_line, _diffusion_eval_line)
NOISY_CLASSIFIER = Objective("train/accuracy", False, classifier_loss_fn, evaluate_classifier,
                             _classifier_train_line, _classifier_eval_line)
AUTOENCODER = Objective("train/bpd", False, autoencoder_loss_fn, evaluate_autoencoder,
                        _autoencoder_train_line, _autoencoder_eval_line)
LATENT_DIFFUSION = Objective("train/latent_bpd", True, latent_runs.loss_fn, latent_runs.evaluate,
                             latent_runs.train_line, latent_runs.eval_line,
                             to_images=latent_runs.to_images)


def of(model) -> Objective:
  """The objective of a model: NOISY_CLASSIFIER for a `NoisyClassifierModel`, AUTOENCODER for
  a `latent.AutoencoderModel`, LATENT_DIFFUSION for a `latent.LatentVDM`, else DIFFUSION."""
  if isinstance(model, noisy_classifier_lib.NoisyClassifierModel):
    return NOISY_CLASSIFIER
  if isinstance(model, latent.AutoencoderModel):
    return AUTOENCODER
  if isinstance(model, latent.LatentVDM):
    return LATENT_DIFFUSION
  return DIFFUSION
