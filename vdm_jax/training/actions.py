"""What a run does besides stepping: test-set bpd and sample grids of given parameters.

Used by the training loop (periodically, on the EMA parameters) and by the checkpoint modes.
The random keys are fixed per run (`eval_key`, `sample_key`, `sample_eval_key`), so evaluating
the same checkpoint twice gives the same number, and the samples of successive steps start from
the same noise.
"""
from __future__ import annotations

import itertools
import time

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import data, evaluation, logging_utils, parallel, sampling
from vdm_jax import model as model_lib
from vdm_jax.config import EvalSpec, RunSpec, SamplingSpec
from vdm_jax.training import guidance


def check_values_fit(spec: RunSpec, split: str, images: np.ndarray) -> None:
  """Raises ValueError unless the config's data model takes the split's values (the data
  model's own check: integers in [0, config.model.vocab_size), or finite floats)."""
  try:
    spec.model.data_model().check_values(images, f"the {split} data of {spec.data.name!r}")
  except ValueError as e:
    raise ValueError(f"config.model (data={spec.model.data!r}, vocab_size="
                     f"{spec.model.vocab_size}): {e}") from None


def eval_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), 1)


def sample_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), 2)


def sample_eval_key(seed: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), 3)


def test_batches(spec: EvalSpec, test_split: tuple[np.ndarray, np.ndarray],
                 mesh: jax.sharding.Mesh):
  """This process's batches of the test split for an evaluation (spec.batch_size images a
  global batch; only the first spec.max_batches when set, a quick look), with a progress bar;
  each a dict of image, label and mask (`data.eval_batches`)."""
  batch = parallel.per_process_batch(spec.batch_size, mesh, "config.eval.batch_size")
  batches = data.eval_batches(*test_split, batch)
  num_batches = -(-len(test_split[0]) // spec.batch_size)
  if spec.max_batches is not None:
    batches = itertools.islice(batches, spec.max_batches)
    num_batches = min(num_batches, spec.max_batches)
  return logging_utils.progress_iter(batches, num_batches, "eval", "batch")


def mean_and_se(values: np.ndarray) -> tuple[float, float]:
  """The mean of per-example values and its standard error (0 for one example)."""
  values = np.asarray(values, np.float64)
  se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else 0.0
  return float(values.mean()), float(se)


def evaluate_params(model: model_lib.VDM, params, spec: EvalSpec,
                    test_split: tuple[np.ndarray, np.ndarray], mesh: jax.sharding.Mesh,
                    key: jax.Array, *, method: str = "elbo") -> dict:
  """Test-set bpd of `params` (`evaluation.evaluate`), with 'eval/'-prefixed keys: eval/bpd,
  eval/bpd_se, eval/recon_bpd, eval/prior_bpd, eval/diffusion_bpd, eval/num_images,
  eval/num_time_samples, eval/T, eval/seconds.

  method: "elbo", or "ode" for the bound through the probability-flow ODE with spec's trace,
  rtol and atol (keys eval/bpd, eval/bpd_se, eval/recon_bpd, eval/z0_nll_bpd,
  eval/dequant_bpd, eval/num_evals, ...; see `evaluation.evaluate`). The training loop
  evaluates the ELBO; `--mode=eval` passes spec.method.

  test_split: (images uint8 [N, H, W, C], labels int32 [N]) already in memory
  (`data.load_arrays`); this process reads its shard of each batch.
  """
  batches = test_batches(spec, test_split, mesh)
  start = time.perf_counter()
  if method == "ode":
    kwargs = dict(method="ode", trace=spec.trace, rtol=spec.rtol, atol=spec.atol)
  else:
    kwargs = dict(method=method, T=spec.T)
  result = evaluation.evaluate(model, {"params": params}, batches, key,
                               num_time_samples=spec.num_time_samples,
                               put_batch=lambda b: parallel.shard_batch(b, mesh), **kwargs)
  out = {f"eval/{k}": v for k, v in result.items()}
  out["eval/seconds"] = time.perf_counter() - start
  return out


def sample_labels(model: model_lib.VDM, num_samples: int) -> jax.Array | None:
  """Labels 0, 1, 2, ... cyclically for a class-conditional model, else None."""
  if not model.num_classes:
    return None
  return jnp.arange(num_samples, dtype=jnp.int32) % model.num_classes


def sample_params(model: model_lib.VDM, params, spec: SamplingSpec, key: jax.Array,
                  num_samples: int | None = None) -> np.ndarray:
  """`num_samples` (default spec.num_samples) images, int32 [N, H, W, C], drawn by
  `sampling.sample_model` with the spec's sampler (T and eta, or rtol and atol for "ode") and
  (class-conditional models) guidance weight, guided by spec.classifier_workdir's classifier
  when set (`guidance.guide`); labels as `sample_labels`."""
  n = spec.num_samples if num_samples is None else num_samples
  model, params = guidance.guide(spec, model, params)
  kwargs = {"guidance_weight": spec.guidance_weight} if model.num_classes else {}
  images = sampling.sample_model(model, {"params": params}, key, n,
                                 labels=sample_labels(model, n), **spec.sampler_kwargs(),
                                 **kwargs)
  return np.asarray(jax.device_get(images))
