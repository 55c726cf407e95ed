"""Many samples over every device of every process, in chunks, written as resumable shards.

    for chunk in generate(model, variables, spec, key, mesh, num_samples=50_000):
      chunk.images   # this process's rows: int32 [n, H, W, C]; chunk.index: their sample ids

A latent diffusion model's samples (`latent.LatentVDM`) are decoded to pixels by its autoencoder
(`latent_runs.to_images`) on each process, so every consumer sees images.

Chunk c holds the samples [c G, (c + 1) G) with G = per_device_batch x the global device count;
its key is fold_in(key, c) and its batch is split over the mesh's 'data' axis, so each device
draws G / devices of them and memory is bounded by the chunk, not by num_samples. The samples
depend only on (key, G, c): the same on 1 process x 4 devices as on 2 x 2.

`write_shards` drives it for `--mode=sample`: every process writes its rows of chunk c to
`<out_dir>/chunk_<c>-process_<p>.npz` (uint8 images, labels, sample ids) atomically, skips
chunks whose files every process already has (a rerun resumes), logs images/s and ETA, and
process 0 writes the PNG grid of the first samples. `<out_dir>/settings.json` records what the
samples depend on (the sampling settings, the key, the chunk size); a rerun with other settings
is refused before anything is drawn, since its chunks would not continue those on disk.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Iterator, Sequence

import jax
import numpy as np

from vdm_jax import latent, logging_utils, parallel, sampling
from vdm_jax import model as model_lib
from vdm_jax.config import SamplingSpec
from vdm_jax.training import latent_runs

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Chunk:
  """One chunk's rows on this process: `index` int64 [n] sample ids (all < num_samples),
  `images` [n, H, W, C] (int32 for discrete data and decoded latents, float32 for continuous
  data), `labels` int32 [n] or None (unconditional model)."""
  chunk: int
  index: np.ndarray
  images: np.ndarray
  labels: np.ndarray | None


def num_chunks(num_samples: int, chunk_size: int) -> int:
  return -(-num_samples // chunk_size)


@functools.lru_cache(maxsize=8)
def _chunk_fn(model, spec: SamplingSpec, mesh, chunk_size: int):
  """The compiled chunk: (variables, key, labels [G] sharded) -> images [G, ...] sharded."""
  rows = parallel.data_sharding(mesh)
  kwargs = {"guidance_weight": spec.guidance_weight} if model.num_classes else {}

  def draw(variables, key, labels):
    return sampling.sample_model(model, variables, key, chunk_size, **spec.sampler_kwargs(),
                                 labels=labels if model.num_classes else None, **kwargs)

  return jax.jit(draw, in_shardings=(parallel.replicated(mesh), None, rows), out_shardings=rows)


def _local_rows(array: jax.Array) -> np.ndarray:
  """This process's rows of a batch-sharded array, in global order."""
  shards = sorted(array.addressable_shards, key=lambda s: s.index[0].start or 0)
  unique = {s.index[0].start or 0: s.data for s in shards}
  return np.concatenate([np.asarray(unique[k]) for k in sorted(unique)])


def _local_index(chunk: int, chunk_size: int, mesh) -> np.ndarray:
  """The global sample ids of this process's rows of `chunk` (its devices' slices)."""
  sharding = parallel.data_sharding(mesh)
  index_map = sharding.addressable_devices_indices_map((chunk_size,))
  starts = sorted({(idx[0].start or 0, idx[0].stop or chunk_size) for idx in index_map.values()})
  return np.concatenate([np.arange(a, b) for a, b in starts]) + chunk * chunk_size


def generate(model: model_lib.VDM, variables, spec: SamplingSpec, key: jax.Array, mesh,
             num_samples: int, *, per_device_batch: int,
             skip: Sequence[int] = ()) -> Iterator[Chunk]:
  """Yields this process's rows of each chunk not in `skip`, in order (see the module
  docstring); every process must call it with the same arguments."""
  chunk_size = per_device_batch * mesh.devices.size
  fn = _chunk_fn(model, spec, mesh, chunk_size)
  variables = jax.device_put(variables, parallel.replicated(mesh))
  for c in range(num_chunks(num_samples, chunk_size)):
    if c in skip:
      continue
    ids = np.arange(c * chunk_size, (c + 1) * chunk_size)
    labels = (ids % model.num_classes if model.num_classes else np.zeros_like(ids)).astype(
        np.int32)
    local_ids = _local_index(c, chunk_size, mesh)
    labels = parallel.shard_batch({"label": labels[local_ids - c * chunk_size]}, mesh)["label"]
    images = _local_rows(fn(variables, jax.random.fold_in(key, c), labels))
    if isinstance(model, latent.LatentVDM):   # latents -> pixels, by its autoencoder
      images = latent_runs.to_images(model, images).astype(np.int32)
    keep = local_ids < num_samples      # the last chunk is drawn whole, kept up to num_samples
    yield Chunk(chunk=c, index=local_ids[keep], images=images[keep],
                labels=(local_ids[keep] % model.num_classes).astype(np.int32)
                if model.num_classes else None)


def shard_path(out_dir: Path, chunk: int, process: int) -> Path:
  return Path(out_dir) / f"chunk_{chunk:05d}-process_{process}.npz"


def _done_everywhere(out_dir: Path, total: int) -> set[int]:
  """Chunks whose shard every process has written (agreed across processes)."""
  mine = np.array([shard_path(out_dir, c, jax.process_index()).exists() for c in range(total)],
                  bool)
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    mine = np.all(np.asarray(multihost_utils.process_allgather(mine)), axis=0)
  return {int(c) for c in np.flatnonzero(mine)}


# Images in the grid of --mode=sample: the first of chunk 0.
GRID_IMAGES = 64


def samples_data(model):
  """The data model of `model`'s samples as `generate` yields them: its own, or for a latent
  model its autoencoder's pixels."""
  if isinstance(model, latent.LatentVDM):
    return latent_runs.decoded_data(model)[0]
  return model.data


def _save_grid(images: np.ndarray, stem: Path, model) -> None:
  """The first GRID_IMAGES samples; for class-conditional (or guided) samples, labels 0, 1,
  2, ... cyclically, one class per column."""
  classes = model.num_classes
  vocab_size = getattr(samples_data(model), "vocab_size", None)
  if classes and classes <= min(GRID_IMAGES, len(images)):
    n = min(GRID_IMAGES, len(images)) // classes * classes
    logging_utils.save_samples(images[:n], stem, vocab_size, ncols=classes)
  else:
    logging_utils.save_samples(images[:GRID_IMAGES], stem, vocab_size)


# SamplingSpec fields that do not change a sample: how many are drawn (a rerun with more
# extends the shards) and the per-device share of a chunk (its size is recorded instead).
_NOT_SETTINGS = ("num_samples", "per_device_batch")


def _check_settings(out_dir: Path, spec: SamplingSpec, key: jax.Array, chunk_size: int,
                    model) -> None:
  """Writes <out_dir>/settings.json, or raises ValueError when the one there differs (for a
  latent model, its autoencoder's identity too: its decoder makes the pixels)."""
  settings = {k: v for k, v in dataclasses.asdict(spec).items() if k not in _NOT_SETTINGS}
  if isinstance(model, latent.LatentVDM):
    settings.update(latent_runs.load(model.autoencoder_workdir,
                                     model.autoencoder_step).identity())
  settings = json.loads(json.dumps({
      **settings, "key": np.asarray(jax.random.key_data(key)).tolist(),
      "chunk_size": chunk_size}, default=str))
  path = out_dir / "settings.json"
  if path.exists():
    old = json.loads(path.read_text())
    if old != settings:
      diff = ", ".join(f"{k}: {old.get(k)!r} there, {settings.get(k)!r} now"
                       for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k))
      raise ValueError(
          f"{out_dir} holds samples drawn with other settings ({diff}); a rerun only completes "
          f"samples drawn the same way: remove that folder, or sample the new settings into "
          f"another workdir.")
  elif jax.process_index() == 0:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def write_shards(model: model_lib.VDM, variables, spec: SamplingSpec, key: jax.Array, mesh,
                 out_dir: str | os.PathLike, num_samples: int, *, per_device_batch: int,
                 grid_path: str | os.PathLike | None = None) -> dict:
  """Writes `num_samples` samples as shard files in `out_dir` (see the module docstring);
  returns {"num_samples", "chunks", "written", "skipped", "seconds", "images_per_s"}."""
  out_dir = Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  chunk_size = per_device_batch * mesh.devices.size
  _check_settings(out_dir, spec, key, chunk_size, model)
  total = num_chunks(num_samples, chunk_size)
  done = _done_everywhere(out_dir, total)
  if done:
    logger.info("%d of %d chunks already in %s: skipped.", len(done), total, out_dir)
  storage_dtype = samples_data(model).storage_dtype
  start, written = time.perf_counter(), 0
  chunks = generate(model, variables, spec, key, mesh, num_samples,
                    per_device_batch=per_device_batch, skip=done)
  for chunk in logging_utils.progress_iter(chunks, total, "samples", "chunk",
                                           initial=len(done)):
    arrays = {"index": chunk.index, "images": chunk.images.astype(storage_dtype)}
    if chunk.labels is not None:
      arrays["labels"] = chunk.labels
    path = shard_path(out_dir, chunk.chunk, jax.process_index())
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    if grid_path is not None and chunk.chunk == 0 and jax.process_index() == 0:
      _save_grid(chunk.images, Path(grid_path).with_suffix(""), model)
    written += 1
    elapsed = time.perf_counter() - start
    rate = written * chunk_size / elapsed
    remaining = (total - len(done) - written) * chunk_size / rate
    logger.info("samples: chunk %d/%d, %.1f images/s, ETA %s", chunk.chunk + 1, total, rate,
                logging_utils.format_duration(remaining))
  seconds = time.perf_counter() - start
  return {"num_samples": num_samples, "chunks": total, "written": written,
          "skipped": len(done), "seconds": seconds,
          "images_per_s": written * chunk_size / seconds if written else float("nan")}


def read_shards(out_dir: str | os.PathLike) -> dict[str, np.ndarray]:
  """Every shard in `out_dir` merged and ordered by sample id: 'index', 'images' (and
  'labels')."""
  parts = [dict(np.load(p)) for p in sorted(Path(out_dir).glob("chunk_*-process_*.npz"))]
  if not parts:
    raise FileNotFoundError(f"No sample shards in {out_dir}.")
  merged = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  order = np.argsort(merged["index"], kind="stable")
  return {k: v[order] for k, v in merged.items()}
