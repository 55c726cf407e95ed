"""The training loop: steps of an objective (`objectives.of(model)`: a diffusion model, or a noisy
classifier for guidance), and the periodic actions (log, checkpoint, eval, sample, and sample
quality when config.sample_eval.every_steps > 0; a classifier is not sampled).

    from vdm_jax import config as config_lib, training
    training.train_and_evaluate(config_lib.resolve(config), workdir)   # resumes if it can

Every periodic action is scheduled by `Every(n)`: due at each multiple of n steps (n = 0: never)
and at the last step. A train call runs up to `steps_per_call` steps and never crosses the next
due step, so actions see exactly the state of their step.

The workdir gets `config.json` (the resolved config), `metrics.jsonl`, TensorBoard events,
`checkpoints/<step>/` and `samples/step_<step>.png`.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Iterator, Mapping

import jax
import numpy as np

from vdm_jax import checkpoint as checkpoint_lib
from vdm_jax import data, latent, logging_utils, parallel
from vdm_jax import model as model_lib
from vdm_jax.config import RunSpec
from vdm_jax.training import actions, in_flight, latent_runs, objectives, sample_eval
from vdm_jax.training import optimizer as optimizer_lib
from vdm_jax.training import state as state_lib
from vdm_jax.training import step as step_lib
from vdm_jax.training import workdir as workdir_lib

logger = logging.getLogger(__name__)


class TrainingDiverged(FloatingPointError):
  """The loss (or gradients, or parameters) became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class Every:
  """A periodic action's schedule: due at every multiple of `n` steps (n = 0: never) and at the
  last step."""
  n: int

  def due(self, step: int, last: int) -> bool:
    return step == last or (self.n > 0 and step % self.n == 0)

  def next_due(self, step: int, last: int) -> int:
    """The first step after `step` at which this is due."""
    return last if self.n <= 0 else min(last, (step // self.n + 1) * self.n)


def _stacked_batches(batches: Iterator[dict], n: int, mesh, with_labels: bool) -> dict:
  """The next n batches stacked [n, B, ...] and sharded over the mesh (batch axis 1)."""
  taken = [next(batches) for _ in range(n)]
  keys = ("image", "label") if with_labels else ("image",)
  return parallel.shard_batch({k: np.stack([b[k] for b in taken]) for k in keys}, mesh,
                              batch_dim=1)


def _likely_causes(spec: RunSpec) -> list[str]:
  """Settings that are known to make training diverge, most likely first. (The data's values
  were checked against the model at start, so they are not among the causes.)"""
  o, causes = spec.optimizer, []
  if o.lr > 1e-2:
    causes.append(f"config.optimizer.lr={o.lr} is far above the usual 1e-4 to 3e-3")
  if o.grad_clip == 0:
    causes.append("gradient clipping is off (config.optimizer.grad_clip=0; 1.0 is usual)")
  if o.warmup_steps == 0:
    causes.append("there is no learning-rate warm-up (config.optimizer.warmup_steps=0)")
  if spec.model.dtype != "float32":
    causes.append(f"the network computes in {spec.model.dtype} (config.model.dtype)")
  return causes or [f"a learning rate too high for this model (config.optimizer.lr={o.lr})"]


def _check_finite(values: dict, steps: list[int], ckpt, spec: RunSpec) -> None:
  if not steps or bool(np.all(values["train/finite"])):
    return
  i = int(np.argmin(values["train/finite"]))
  ckpt.wait()
  last = ckpt.latest_step()
  kept = (f"the last good checkpoint (step {last}) in {ckpt.directory} is kept"
          if last is not None else "no checkpoint had been written yet")
  raise TrainingDiverged(
      f"Training diverged at step {steps[i]}: loss {float(values['train/loss'][i])}, gradient "
      f"norm {float(values['train/grad_norm'][i])} (non-finite loss, gradients or parameters). "
      f"This state was not saved; {kept}. Likely causes: {'; '.join(_likely_causes(spec))}. "
      "Change them and run the same command again: it resumes from the checkpoint (every "
      "optimizer setting keeps the state's structure).")


def train_and_evaluate(spec: RunSpec, workdir: str | Path, *,
                       mesh: jax.sharding.Mesh | None = None, start_over: bool = False,
                       allow_config_change: bool = False) -> dict:
  """Trains `spec` in `workdir`, resuming from its latest checkpoint, and evaluates.

  Logs every spec.training.log_every steps, checkpoints every checkpoint_every (keeping
  keep_checkpoints), evaluates the EMA parameters on the test split every eval_every and
  writes sample grids every sample_every steps, and does each at the last step; with
  spec.sample_eval.every_steps > 0, also the sample quality of the EMA parameters
  (`sample_eval.SampleEvaluator`: FD, KID, precision/recall) then and at the last step.
  SIGTERM (a pre-emption) logs the step reached if it is a logging step, saves its
  checkpoint at the next step boundary and returns (an evaluation or samples due at that step
  are skipped).

  Before anything is compiled: both data splits are read and checked against the model (and
  the feature network of sample evaluation against the model's samples), the
  workdir is locked (`WorkdirLock`), the checkpoint (if any) is restored and compared with the
  config (dataset, seed, image shape, state structure); only then are `config.json` and
  `metrics.jsonl` (cut back to the restored step, so it holds one history) written.

  Args:
    start_over: move existing step folders to `checkpoints.incomplete/` and train from step 0
      (needed when step folders exist but none restores).
    allow_config_change: resume even if the checkpoint's dataset / seed / image shape differ.

  Returns the last record written to metrics.jsonl with eval results ({"preempted": True, ...}
  after SIGTERM). Raises TrainingDiverged (naming the step) when the loss becomes non-finite;
  that state is not saved.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  model = spec.model.build()   # a VDM, or what another objective trains (`objectives.of`)
  # Both splits are read once, before anything is compiled or written: a missing or damaged
  # file fails here, not after training.
  train_split = data.load_arrays(spec.data.name, "train", spec.data.data_dir)
  test_split = data.load_arrays(spec.data.name, "test", spec.data.data_dir)
  actions.check_values_fit(spec, "train", train_split[0])
  actions.check_values_fit(spec, "test", test_split[0])
  evaluator = None
  if spec.sample_eval.every_steps > 0:
    split = {"train": train_split, "test": test_split}[spec.sample_eval.reference_split]
    evaluator = sample_eval.SampleEvaluator(spec, model, split[0])
  workdir = Path(workdir)
  with workdir_lib.WorkdirLock(workdir):
    ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints",
                                       max_to_keep=spec.training.keep_checkpoints)
    try:
      if start_over:
        ckpt.set_aside_all()
      optimizer = optimizer_lib.make_optimizer(spec.optimizer, spec.training.num_steps)
      # Stage 2 of latent diffusion: the autoencoder's identity goes into (and is compared
      # with) the checkpoints; the model trains on the posterior moments of its latents.
      ae = None
      if isinstance(model, latent.LatentVDM):
        ae = latent_runs.load(model.autoencoder_workdir, model.autoencoder_step)
      extra_meta = ae.identity() if ae is not None else {}
      state, resumed = _restore_or_init(spec, model, optimizer, mesh, ckpt, allow_config_change,
                                        extra_meta)
      if ae is not None:
        train_split = (latent_runs.posterior_moments(ae, train_split[0]), train_split[1])
      if jax.process_index() == 0:
        logging_utils.truncate_metrics(workdir, int(state.step) if resumed else None)
      workdir_lib.write_config(spec, workdir)
      writer = logging_utils.MetricsWriter(workdir, enabled=jax.process_index() == 0)
      try:
        return _run(spec, workdir, model, optimizer, state, mesh, writer, ckpt, train_split,
                    test_split, evaluator, extra_meta)
      finally:
        writer.close()
    finally:
      ckpt.close()


def _restore_or_init(spec: RunSpec, model, optimizer, mesh, ckpt, allow_config_change: bool,
                     extra_meta: Mapping):
  """(state, resumed): the latest usable checkpoint, checked against the config (and against
  `extra_meta`, what this run records beyond `workdir.checkpoint_meta`), or a fresh state."""
  restored = ckpt.restore(state_lib.abstract_state(model, optimizer, mesh))
  if restored is None:
    return state_lib.create_state(model, optimizer, spec.training.seed, mesh), False
  state, meta = restored
  step = int(state.step)
  differences = [f"{k}: checkpoint {meta.get(k)!r}, now {v!r}" for k, v in extra_meta.items()
                 if meta.get(k) != v]
  if differences and not allow_config_change:
    raise workdir_lib.CheckpointMismatchError(
        f"The checkpoint at step {step} in {ckpt.directory} was trained on another autoencoder "
        f"checkpoint ({'; '.join(differences)}). Set config.model.autoencoder_step to the step "
        "it was trained on (and keep that checkpoint), use a new --workdir, or pass "
        "--allow_config_change to resume anyway.")
  for difference in differences + workdir_lib.check_resume(spec, meta, step, ckpt.directory,
                                                           allow_config_change):
    logger.warning("Resuming despite a changed setting (--allow_config_change): %s.",
                   difference)
  logger.info("Resumed from the checkpoint at step %d in %s.", step, ckpt.directory)
  if meta.get("global_batch_size", spec.training.batch_size) != spec.training.batch_size:
    logger.warning("The checkpoint was trained with global batch %s, this config has %d: the "
                   "data order after resuming differs from an uninterrupted run.",
                   meta.get("global_batch_size"), spec.training.batch_size)
  return state, True


def _run(spec: RunSpec, workdir: Path, model: model_lib.VDM, optimizer, state, mesh, writer,
         ckpt, train_split, test_split, evaluator, extra_meta: Mapping) -> dict:
  loop, num_steps, step = spec.training, spec.training.num_steps, int(state.step)
  objective = objectives.of(model)
  _log_start(spec, model, state, mesh, writer, step)
  train_step = step_lib.compiled_train_step(model, optimizer, mesh,
                                            ema_rate=spec.optimizer.ema_rate)
  batches = data.train_batches(*train_split, parallel.per_process_batch(loop.batch_size, mesh),
                               seed=loop.seed, start_batch=step)
  ckpt_meta = workdir_lib.checkpoint_meta(spec) | dict(extra_meta)
  last_record: dict = {}

  def log(step, values):
    nonlocal last_record
    last_record = _log_train(spec, objective, writer, step, values, throughput.rate(step),
                             len(train_split[0]))
    bar.update(0, **{objective.headline.split("/")[-1]: last_record[objective.headline]})

  # Steps on disk, listed once: listing again while a save is in flight would reload orbax's
  # bookkeeping and keep more than keep_checkpoints steps.
  saved = set(ckpt.all_steps())

  def save(step, _=None):
    if step not in saved:
      ckpt.save(step, state, ckpt_meta)
      saved.add(step)

  def evaluate(step, _=None):
    nonlocal last_record
    last_record = _log_eval(objective, writer, step, objective.evaluate(
        model, state.ema_params, spec.eval, test_split, mesh, actions.eval_key(loop.seed)))

  def sample(step, _=None):
    samples = actions.sample_params(model, state.ema_params, spec.sampling,
                                    actions.sample_key(loop.seed))
    if objective.to_images is not None:   # latents -> pixels
      samples = objective.to_images(model, samples)
      _write_samples(workdir, writer, step, samples, spec.model.vocab_size)
    else:
      _write_samples(workdir, writer, step, samples, model.vocab_size)

  def sample_quality(step, _=None):
    result = evaluator(model, state.ema_params, mesh, actions.sample_eval_key(loop.seed))
    logger.info("%s", sample_eval.summary(step, result))
    writer.write(step, result)

  periodic = [(Every(loop.log_every), log), (Every(loop.checkpoint_every), save),
              (Every(loop.eval_every), evaluate)]
  if objective.samples:   # a noisy classifier has nothing to sample
    periodic.append((Every(loop.sample_every), sample))
  if evaluator is not None:   # every_steps > 0 (Every(0) would still be due at the last step)
    periodic.append((Every(spec.sample_eval.every_steps), sample_quality))
  pending, throughput, start_step = in_flight.Pending(), in_flight.Throughput(step), step
  with in_flight.Preemption() as preempted, logging_utils.Progress(num_steps, "train", "step",
                                                         initial=step) as bar:
    while step < num_steps:
      next_due = min(every.next_due(step, num_steps) for every, _ in periodic)
      n = min(loop.steps_per_call, next_due - step)
      state, metrics = train_step(state, _stacked_batches(batches, n, mesh, model.num_classes))
      pending.add(step, metrics)
      step += n
      throughput.after_call(state, step)
      bar.update(n)
      due = [action for every, action in periodic if every.due(step, num_steps)]
      stop = preempted()
      if due or stop:
        values, steps = pending.collect()
        _check_finite(values, steps, ckpt, spec)
        # A pre-emption keeps the grace period short: it logs the step if that is due (the
        # resumed run starts after it, so it would never be logged) and saves; an evaluation
        # or samples due at this step are skipped.
        for action in (due if not stop else [a for a in due if a is log] + [save]):
          action(step, values)
        writer.flush()
        throughput.mark(step)
      if stop:
        logger.warning("SIGTERM: saved the checkpoint of step %d in %s; stopping. The same "
                       "command resumes from it.", step, ckpt.directory)
        ckpt.wait()
        return writer.write(step, {"event": "preempted"}) | {"preempted": True}

  if start_step == num_steps:   # a finished run: evaluate and sample its final state again
    evaluate(step)
    if objective.samples:
      sample(step)
    if evaluator is not None:
      sample_quality(step)
  save(step)
  ckpt.wait()
  writer.flush()
  return last_record


def _log_start(spec: RunSpec, model, state, mesh, writer, step: int) -> None:
  num_params = model_lib.param_count(state.params)
  m = spec.model
  network = next(getattr(model, a) for a in ("network", "classifier", "autoencoder")
                 if hasattr(model, a))
  logger.info(
      "Training %s on %s: %d parameters, network %s, schedule %s, weighting %s, schedule "
      "objective %s; global batch %d on %d devices (%d processes); steps %d -> %d.",
      type(network).__name__, spec.data.name, num_params, m.network, m.schedule,
      m.weighting, m.schedule_objective, spec.training.batch_size, mesh.devices.size,
      jax.process_count(), step, spec.training.num_steps)
  writer.write(step, {"event": "start", "weighting": m.weighting,
                      "schedule_objective": m.schedule_objective, "num_params": num_params,
                      "num_devices": int(mesh.devices.size),
                      "global_batch": spec.training.batch_size})
  writer.write_text(step, "config", "```\n" + spec.to_json() + "\n```")


def _log_train(spec: RunSpec, objective, writer, step: int, values: dict, rate: float,
               num_train: int) -> dict:
  batch, num_steps = spec.training.batch_size, spec.training.num_steps
  record = {k: float(np.mean(v)) for k, v in values.items() if k != "train/finite"}
  record.update({"steps_per_s": rate, "images_per_s": rate * batch,
                 "epoch": step * batch / num_train})
  eta = (num_steps - step) / rate if rate > 0 else float("nan")
  logger.info("step %d/%d: %s, %.2f steps/s, %.1f images/s, ETA %s", step, num_steps,
              objective.train_line(record), rate, rate * batch,
              logging_utils.format_duration(eta))
  return writer.write(step, record)


def _log_eval(objective, writer, step: int, result: dict) -> dict:
  logger.info("step %d: %s", step, objective.eval_line(result))
  return writer.write(step, result)


def _write_samples(workdir: Path, writer, step: int, images: np.ndarray,
                   vocab_size: int | None) -> None:
  """samples/step_<step>.png (image grids of discrete data, vocab_size values) or .npy
  (anything else: vocab_size None)."""
  stem = workdir / "samples" / f"step_{step}"
  if jax.process_index() == 0:
    path, grid = logging_utils.save_samples(images, stem, vocab_size)
    if grid is not None:
      writer.write_images(step, "samples", grid)
    logger.info("step %d: wrote %d samples to %s", step, len(images), path)
