"""Stage 2 of latent diffusion in the training system: the autoencoder run it builds on.

    ae = latent_runs.load(model.autoencoder_workdir, model.autoencoder_step)
    moments = latent_runs.posterior_moments(ae, images)     # of u = s z: [N, h, w, 2c] float32
    images = latent_runs.decode(ae, u)                      # latents u -> uint8 pixels

`load` restores the stage-1 run's EMA parameters once per (workdir, step) and gives its
identity (step, sha256 of the parameters, latent scale), which a stage-2 checkpoint records and
a resume compares. The latent scale s = 1 / std of z over the training split
(`latent.latent_scale`) is computed once per autoencoder checkpoint and stored beside it, in
`<workdir>/checkpoints/latent_scale_<step>.json`, so every stage-2 run of that checkpoint
trains on the same u.

The encoding runs on one device with a fixed batch, so the moments are the same numbers
whatever the mesh and process count of the stage-2 run.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import checkpoint as checkpoint_lib, config as config_lib, data, evaluation, latent
from vdm_jax import parallel
from vdm_jax.training import actions, state as state_lib, workdir as workdir_lib

logger = logging.getLogger(__name__)

ENCODE_BATCH = 500   # images per encoder call (fixed: the numbers do not depend on it anyway)


@dataclasses.dataclass(frozen=True, eq=False)
class Autoencoder:
  """A stage-1 run's autoencoder: model, EMA params (host), step, identity and latent scale."""
  model: latent.AutoencoderModel
  params: Any
  step: int
  params_sha256: str
  scale: float
  workdir: str

  def identity(self) -> dict:
    """What a stage-2 checkpoint records of it (compared on resume)."""
    return {"autoencoder_step": self.step, "autoencoder_sha256": self.params_sha256,
            "latent_scale": self.scale}


def read_spec(workdir: str | os.PathLike):
  """The resolved spec of a stage-1 run (its config.json); ValueError unless it trains an
  autoencoder."""
  spec = config_lib.resolve(workdir_lib.read_config(workdir))
  if spec.model.network != config_lib.AUTOENCODER_NETWORK:
    raise ValueError(
        f"config.model.autoencoder_workdir={workdir} holds a run of network "
        f"{spec.model.network!r}, not an autoencoder: train stage 1 with "
        f"config.model.network='{config_lib.AUTOENCODER_NETWORK}' first "
        "(experiments/configs/ldm_fashion_mnist.py, stage 1).")
  return spec


def _sha256(params) -> str:
  h = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
  return h.hexdigest()


@functools.partial(jax.jit, static_argnames=("model",))
def _encode(variables, images, *, model):
  return model.apply(variables, images, method=model.encode)


@functools.partial(jax.jit, static_argnames=("model",))
def _decode(variables, z, *, model):
  return model.apply(variables, z, method=model.decode)


def _moments_of_z(model, params, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  device = jax.local_devices()[0]
  variables = jax.device_put({"params": params}, device)
  means, log_stds = [], []
  for i in range(0, len(images), ENCODE_BATCH):
    m, s = _encode(variables, jax.device_put(images[i:i + ENCODE_BATCH], device), model=model)
    means.append(np.asarray(m))
    log_stds.append(np.asarray(s))
  return np.concatenate(means), np.concatenate(log_stds)


def load(workdir: str | os.PathLike, step: int | None = None) -> Autoencoder:
  """The stage-1 run in `workdir` at `step` (None: its latest checkpoint), read once per process
  and checkpoint; computes and stores its latent scale on first use."""
  spec = read_spec(workdir)
  if step is None:
    ckpt = checkpoint_lib.Checkpointer(Path(workdir) / "checkpoints", max_to_keep=None)
    try:
      step = ckpt.latest_step()
    finally:
      ckpt.close()
    if step is None:
      raise FileNotFoundError(f"config.model.autoencoder_workdir={workdir} has no checkpoint: "
                              "train stage 1 there first.")
  return _load(str(workdir), int(step), spec)


@functools.lru_cache(maxsize=4)
def _load(workdir: str, step: int, spec) -> Autoencoder:
  model, state, step = state_lib.restore_state(spec, workdir, step,
                                               parallel.make_mesh(jax.local_devices()[:1]))
  params = jax.device_get(state.ema_params)
  sha = _sha256(params)
  path = Path(workdir) / "checkpoints" / f"latent_scale_{step}.json"
  record = json.loads(path.read_text()) if path.is_file() else None
  if record is None or record.get("params_sha256") != sha:
    images = data.load_arrays(spec.data.name, "train", spec.data.data_dir)[0]
    mean, log_std = _moments_of_z(model, params, images)
    record = {"step": step, "params_sha256": sha, "num_images": len(images),
              "scale": latent.latent_scale(mean, log_std)}
    if jax.process_index() == 0:
      tmp = path.with_suffix(".json.tmp")
      tmp.write_text(json.dumps(record, indent=2) + "\n")
      os.replace(tmp, path)
    logger.info("Latent scale of the autoencoder at step %d in %s: %.6g (1 / std of z over %d "
                "training images), stored in %s.", step, workdir, record["scale"],
                len(images), path)
  return Autoencoder(model, params, step, sha, float(record["scale"]), str(workdir))


def posterior_moments(ae: Autoencoder, images: np.ndarray) -> np.ndarray:
  """q(u | x) of u = s z for uint8 images [N, H, W, C]: float32 [N, h, w, 2c], the mean and
  log-std concatenated on the last axis (`latent.split_moments`)."""
  mean, log_std = _moments_of_z(ae.model, ae.params, images)
  return np.concatenate([ae.scale * mean, log_std + np.log(ae.scale)], axis=-1).astype(np.float32)


def decode(ae: Autoencoder, u: np.ndarray) -> np.ndarray:
  """Latents u [N, h, w, c] (of the latent model) -> uint8 images: the decoder's location at
  z = u / s, rounded to its pixel bin."""
  device = jax.local_devices()[0]
  variables = jax.device_put({"params": ae.params}, device)
  out = [np.asarray(_decode(variables, jnp.asarray(u[i:i + ENCODE_BATCH] / ae.scale,
                                                   jnp.float32), model=ae.model))
         for i in range(0, len(u), ENCODE_BATCH)]
  return np.concatenate(out).astype(np.uint8)


# ----------------------------------------------------------------- the stage-2 objective


def loss_fn(model, params, batch, rng, train: bool = True):
  """The latent VDM's objective on posterior moments (`objectives.diffusion_loss_fn` applied to
  `latent.LatentVDM.objective`), its bound logged per latent dimension of u:
  'train/loss' and 'train/latent_bpd', 'train/latent_recon_bpd', 'train/latent_prior_bpd',
  'train/latent_diffusion_bpd' (bits per latent dimension; continuous, so they may be < 0)."""
  from vdm_jax.training import objectives
  objective, metrics = objectives.diffusion_loss_fn(model, params, batch, rng, train)
  return objective, {k.replace("train/", "train/latent_") if k != "train/loss" else k: v
                     for k, v in metrics.items()}


@functools.partial(jax.jit, static_argnames=("model", "ae_model", "num_time_samples"))
def _bound_batch(variables, ae_variables, images, labels, key, scale, *, model, ae_model,
                 num_time_samples):
  mean, log_std = ae_model.apply(ae_variables, images, method=ae_model.encode)
  decoder_nll = lambda z: ae_model.apply(ae_variables, images, z, method=ae_model.decoder_nll)
  latent_nll = lambda u, k: model.apply(variables, u, labels, rngs={"sample": k}).total
  draws = [latent.pixel_bound(mean, log_std, decoder_nll, latent_nll, k, scale=scale)
           for k in jax.random.split(key, num_time_samples)]
  return {name: jnp.mean(jnp.stack([getattr(d, name) for d in draws]), axis=0)
          for name in latent.PixelBound._fields}


def evaluate(model, params, spec, test_split, mesh, key, method: str = "elbo") -> dict:
  """The pixel-space bound of autoencoder + latent VDM on the test split (`latent.pixel_bound`;
  spec.num_time_samples draws of (z, t) per image, averaged; spec's batch_size and max_batches
  apply), in bits per pixel dimension: 'eval/bpd' with 'eval/bpd_se' (standard error over the
  images) and its parts 'eval/decoder_bpd' (-log p(x | z)), 'eval/encoder_entropy_bpd'
  (H(q(z | x)), subtracted) and 'eval/latent_bpd' (the latent VDM's bound on -log p(z));
  'eval/latent_scale', 'eval/num_images', 'eval/seconds'. A class-conditional model's bound is
  on -log p(x | y). `method` is the diffusion objective's; only the ELBO is available here."""
  if method != "elbo":
    raise ValueError(f"the latent model's pixel bound is evaluated by the ELBO, not {method!r}:"
                     " set config.eval.method = 'elbo'.")
  ae = load(model.autoencoder_workdir, model.autoencoder_step)
  ae_variables = jax.device_put({"params": ae.params}, parallel.replicated(mesh))
  start = time.perf_counter()
  parts: dict[str, list] = {name: [] for name in latent.PixelBound._fields}
  for n, b in enumerate(actions.test_batches(spec, test_split, mesh)):
    mask = np.asarray(b["mask"], bool)
    device_batch = parallel.shard_batch({"image": b["image"], "label": b["label"]}, mesh)
    labels = device_batch["label"].astype(jnp.int32) if model.num_classes else None
    out = _bound_batch({"params": params}, ae_variables, device_batch["image"], labels,
                       jax.random.fold_in(key, n), jnp.float32(ae.scale), model=model,
                       ae_model=ae.model, num_time_samples=spec.num_time_samples)
    out, mask = evaluation.gather_batch(out, mask)
    for name in parts:
      parts[name].append(np.asarray(out[name], np.float64)[mask])
  nats = {name: np.concatenate(v) for name, v in parts.items()}
  if not len(nats["decoder_nll"]):
    raise ValueError("the latent model's evaluation got no real images.")
  to_bits = 1.0 / (math.prod(ae.model.image_shape) * math.log(2.0))
  total = (nats["decoder_nll"] - nats["encoder_entropy"] + nats["latent_nll"]) * to_bits
  bpd, bpd_se = actions.mean_and_se(total)
  return {"eval/bpd": bpd, "eval/bpd_se": bpd_se,
          "eval/decoder_bpd": float(nats["decoder_nll"].mean() * to_bits),
          "eval/encoder_entropy_bpd": float(nats["encoder_entropy"].mean() * to_bits),
          "eval/latent_bpd": float(nats["latent_nll"].mean() * to_bits),
          "eval/latent_scale": ae.scale, "eval/num_images": len(total),
          "eval/num_time_samples": spec.num_time_samples,
          "eval/seconds": time.perf_counter() - start}


def to_images(model, samples: np.ndarray) -> np.ndarray:
  """The latent model's samples u -> uint8 images through its autoencoder's decoder."""
  return decode(load(model.autoencoder_workdir, model.autoencoder_step), np.asarray(samples))


def decoded_data(model) -> tuple[Any, tuple[int, ...]]:
  """(data model, image shape) of a latent model's decoded samples: its autoencoder's pixels,
  read from the stage-1 run's config (nothing is restored)."""
  from vdm_jax.config import specs
  ae = specs.autoencoder_spec(model.autoencoder_workdir).model
  return ae.data_model(), tuple(ae.image_shape)


def train_line(r: dict) -> str:
  return (f"train latent bpd {r['train/latent_bpd']:.4f} (recon "
          f"{r['train/latent_recon_bpd']:.4f} prior {r['train/latent_prior_bpd']:.4f} "
          f"diffusion {r['train/latent_diffusion_bpd']:.4f}; bits per latent dimension)")


def eval_line(r: dict) -> str:
  return (f"eval bpd {r['eval/bpd']:.4f} +- {r['eval/bpd_se']:.4f} (pixel-space bound: decoder "
          f"{r['eval/decoder_bpd']:.4f} - encoder entropy {r['eval/encoder_entropy_bpd']:.4f} + "
          f"latent {r['eval/latent_bpd']:.4f}) on {r['eval/num_images']} test images in "
          f"{r['eval/seconds']:.1f}s")
