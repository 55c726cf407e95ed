"""Evaluating and sampling a trained run's checkpoint (the CLI's --mode=eval / --mode=sample /
--mode=sample_eval), or a checkpoint of the official VDM code (`official_checkpoint`)."""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax

from vdm_jax import data, parallel
from vdm_jax import config as config_lib
from vdm_jax.config import RunSpec
from vdm_jax.training import actions, guidance, objectives, sample_eval, sample_shards
from vdm_jax.training.state import restore_state

logger = logging.getLogger(__name__)


def checkpoint_params(spec: RunSpec, workdir: str | Path, step: int | None,
                      official_checkpoint: str | Path | None, mesh: jax.sharding.Mesh):
  """(model, EMA params replicated over the mesh, step, name prefix of the outputs) of this
  run's checkpoint, or of an official VDM checkpoint (a ckpt-<n>.flax file or its folder) for
  the official-layout model the config describes (e.g. experiments/configs/cifar10_paper.py)."""
  if official_checkpoint is None:
    model, state, step = restore_state(spec, workdir, step, mesh)
    return model, state.ema_params, step, ""
  if step is not None:
    raise ValueError("a step selects one of this workdir's checkpoints; an official checkpoint "
                     "is chosen by its path (a ckpt-<n>.flax file).")
  from vdm_jax.interop import official
  config = official.official_model_config(spec.model.build())
  model, variables, meta = official.load_checkpoint(official_checkpoint, config,
                                                    image_shape=spec.model.image_shape)
  logger.info("official checkpoint %s (step %d, %s)", meta["path"], meta["step"], meta["params"])
  params = jax.device_put(variables["params"], parallel.replicated(mesh))
  return model, params, meta["step"], "official_"


def evaluate_checkpoint(spec: RunSpec, workdir: str | Path, step: int | None = None, *,
                        mesh: jax.sharding.Mesh | None = None,
                        official_checkpoint: str | Path | None = None) -> dict:
  """Test-set bpd of a checkpoint's EMA parameters, with the same key as the run's own evals,
  by spec.eval.method (the ELBO or the ODE bound).
  Writes `<workdir>/eval_step_<step>.json` (metrics.jsonl stays the training run's history, so
  this can run beside it); returns the record. With `official_checkpoint`, that checkpoint
  (`checkpoint_params`) instead, written to `<workdir>/eval_official_step_<step>.json`."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  test_split = data.load_arrays(spec.data.name, "test", spec.data.data_dir)
  actions.check_values_fit(spec, "test", test_split[0])
  model, params, step, prefix = checkpoint_params(spec, workdir, step, official_checkpoint, mesh)
  result = objectives.of(model).evaluate(model, params, spec.eval, test_split, mesh,
                                         actions.eval_key(spec.training.seed),
                                         method=spec.eval.method)
  record = {"step": step, "time": round(time.time(), 3), "mode": "eval", **result}
  if official_checkpoint is not None:
    record["checkpoint"] = str(official_checkpoint)
  if jax.process_index() == 0:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / f"eval_{prefix}step_{step}.json").write_text(
        json.dumps(record, indent=2) + "\n")
  return record


def _check_sampled(spec: RunSpec, mode: str) -> None:
  """ValueError, before anything is read, for a run whose model is not sampled."""
  if spec.model.network in config_lib.NOT_DIFFUSION:
    raise ValueError(
        f"--mode={mode} samples a diffusion model; this run trains network "
        f"{spec.model.network!r} (config.model.network), which has no samples. Evaluate it "
        "with --mode=eval.")


def guidance_suffix(how) -> str:
  """'_w<weight>' for classifier-free guidance, '_cg<scale>' for classifier guidance (both,
  in that order, or ''): part of the names of sample folders and sample-eval records."""
  out = f"_w{how.guidance_weight:g}" if how.guidance_weight else ""
  if how.classifier_workdir is not None:
    out += f"_cg{how.classifier_scale:g}"
  return out


def sample_checkpoint(spec: RunSpec, workdir: str | Path, step: int | None = None,
                      num_samples: int | None = None, *, seed: int | None = None,
                      mesh: jax.sharding.Mesh | None = None,
                      official_checkpoint: str | Path | None = None) -> dict:
  """Samples a checkpoint's EMA parameters over every device of every process, in chunks of
  spec.sampling.per_device_batch images per device (`sample_shards.write_shards`): shard files
  in `<workdir>/samples_step_<step>/` (a rerun completes what is missing) and a grid of the
  first samples in `<workdir>/samples_step_<step>.png`. num_samples None: spec.sampling's.
  seed None uses the run's own sample key. Returns the paths, the step and the counts.
  With `official_checkpoint`, that checkpoint (`checkpoint_params`), into
  `<workdir>/samples_official_step_<step>/` and `.png`. With spec.sampling.classifier_workdir,
  guided by that noisy classifier (`guidance.guide`; the grid one class per column), into
  `samples_<prefix>step_<step>_cg<scale>/`; with classifier-free guidance, `..._w<weight>/`.
  A folder sampled with other settings is refused (`sample_shards.write_shards`)."""
  _check_sampled(spec, "sample")
  mesh = parallel.make_mesh() if mesh is None else mesh
  model, params, step, prefix = checkpoint_params(spec, workdir, step, official_checkpoint, mesh)
  model, params = guidance.guide(spec.sampling, model, params, mesh)
  key = actions.sample_key(spec.training.seed) if seed is None else jax.random.PRNGKey(seed)
  n = spec.sampling.num_samples if num_samples is None else int(num_samples)
  name = f"samples_{prefix}step_{step}{guidance_suffix(spec.sampling)}"
  out_dir, png = Path(workdir) / name, Path(workdir) / f"{name}.png"
  stats = sample_shards.write_shards(model, {"params": params}, spec.sampling, key,
                                     mesh, out_dir, n,
                                     per_device_batch=spec.sampling.per_device_batch,
                                     grid_path=png)
  logger.info("%d samples of step %d in %s (%d chunks written, %d already there), grid %s",
              n, step, out_dir, stats["written"], stats["skipped"], png)
  return {"png": str(png), "dir": str(out_dir), "step": step, **stats}


def sample_eval_checkpoint(spec: RunSpec, workdir: str | Path, step: int | None = None,
                           num_samples: int | None = None, *, seed: int | None = None,
                           mesh: jax.sharding.Mesh | None = None,
                           official_checkpoint: str | Path | None = None) -> dict:
  """Sample quality (FD, KID, precision/recall; `sample_eval.SampleEvaluator`) of a
  checkpoint's EMA parameters with spec.sample_eval's sampler, num_samples (or `num_samples`)
  and feature network, with the run's own sample-eval key unless `seed` is given. The feature
  network is checked against the model and the reference statistics are read (or computed and
  cached) before anything is sampled. Writes the record to
  `<workdir>/sample_eval_<prefix>step_<step>_<sampler>-<T>_n<N>.json` (ode: `..._ode_n<N>`)
  and returns it."""
  _check_sampled(spec, "sample_eval")
  mesh = parallel.make_mesh() if mesh is None else mesh
  evaluator = sample_eval.SampleEvaluator(spec, spec.model.build())
  model, params, step, prefix = checkpoint_params(spec, workdir, step, official_checkpoint, mesh)
  key = actions.sample_eval_key(spec.training.seed) if seed is None else jax.random.PRNGKey(seed)
  result = evaluator(model, params, mesh, key, num_samples)
  record = {"step": step, "time": round(time.time(), 3), "mode": "sample_eval", **result}
  if official_checkpoint is not None:
    record["checkpoint"] = str(official_checkpoint)
  s, n = spec.sample_eval, result["sample_eval/num_samples"]
  how = s.sampler if s.sampler == "ode" else f"{s.sampler}-{s.T}"
  how += guidance_suffix(s)
  if jax.process_index() == 0:
    Path(workdir).mkdir(parents=True, exist_ok=True)
    (Path(workdir) / f"sample_eval_{prefix}step_{step}_{how}_n{n}.json").write_text(
        json.dumps(record, indent=2) + "\n")
  return record
