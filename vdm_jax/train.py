"""Training: the train state, the optimizer, one jit-compiled data-parallel step, and the loop.

    from vdm_jax import train
    train.train_and_evaluate(config, workdir)     # resumes from <workdir>/checkpoints if present

Pieces, usable on their own:

* `TrainState` (step, params, ema_params, opt_state, rng) and `create_train_state`.
* `make_optimizer(config.optimizer, num_steps)`: gradient clipping by global norm, then AdamW
  (b1 0.9, b2 0.99, eps 1e-8) with linear warm-up and optional linear / cosine decay; weight
  decay on weights only (not on biases, norm scales, or the noise schedule's parameters).
* `loss_fn(model, params, batch, rng, train=True)`: the training objective (`VDM.objective`:
  the mean negative ELBO in nats unless config.model.weighting / schedule_objective say
  otherwise) and its metrics (the bound in bpd). The one function the step takes its loss from.
* `make_train_step(model, optimizer, mesh, ema_rate=...)`: ONE `jax.jit` function that runs
  `lax.scan` over a stacked batch [steps, B, ...] (several optimizer steps per call; unrolled
  on CPU), with the batch split over the mesh's 'data' axis, the state replicated and donated.
  Each step's random key is `fold_in(state.rng, state.step)`, so the numbers do not depend on
  the device count, on how many steps run per call, or on where a run was resumed.
* `evaluate_params`, `sample_params`: test-set bpd (with its standard error) and sample grids.
* `train_and_evaluate(config, workdir)`, `evaluate_checkpoint`, `sample_checkpoint`: what the CLI
  (`python -m experiments.train`) runs.

The workdir gets `config.json`, `metrics.jsonl`, TensorBoard events, `checkpoints/<step>/` and
`samples/step_<step>.png` (see DESIGN.md, the workdir contract).
"""
from __future__ import annotations

import functools
import itertools
import json
import logging
import math
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from vdm_jax import checkpoint as checkpoint_lib
from vdm_jax import data, likelihood, logging_utils, losses, parallel
from vdm_jax import model as model_lib

logger = logging.getLogger(__name__)

Array = jax.Array
PyTree = Any

DECAYS = ("none", "linear", "cosine")


# ============================================================================ state & optimizer


@flax.struct.dataclass
class TrainState:
  """Everything training needs to continue exactly: saved whole in each checkpoint.

  step: int32 scalar, optimizer steps done. params / ema_params: the model's 'params' collection
  and its exponential moving average. opt_state: optax state. rng: uint32[2] base key; step i
  uses `fold_in(rng, i)`.
  """
  step: Array
  params: PyTree
  ema_params: PyTree
  opt_state: PyTree
  rng: Array


def _cfg_get(cfg: Any, key: str, default: Any = None) -> Any:
  """cfg[key] for a ConfigDict / dict, `default` when absent."""
  try:
    value = cfg[key]
  except (KeyError, AttributeError, TypeError):
    return default
  return default if value is None and default is not None else value


def decay_mask(params: PyTree) -> PyTree:
  """True for the leaves that get weight decay: kernels and embeddings, except the noise
  schedule's parameters (anything under 'gamma_module'). Biases and norm scales get none."""
  def keep(path, _):
    names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    if "gamma_module" in names:
      return False
    return names[-1] not in ("bias", "scale")
  return jax.tree_util.tree_map_with_path(keep, params)


def learning_rate_schedule(opt_cfg: Any, num_steps: int) -> Callable[[Array], Array]:
  """lr(step): linear warm-up to `lr` over `warmup_steps`, then 'none' (constant), 'linear' or
  'cosine' decay to 0 at `num_steps`."""
  lr = float(_cfg_get(opt_cfg, "lr", 1e-3))
  warmup = int(_cfg_get(opt_cfg, "warmup_steps", 0))
  decay = _cfg_get(opt_cfg, "decay", "none")
  if decay not in DECAYS:
    raise ValueError(f"config.optimizer.decay must be one of {DECAYS}, got {decay!r}.")
  decay_steps = max(1, int(num_steps) - warmup)

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    scale = jnp.minimum(1.0, (step + 1.0) / warmup) if warmup > 0 else jnp.float32(1.0)
    frac = jnp.clip((step - warmup) / decay_steps, 0.0, 1.0)
    if decay == "linear":
      scale = scale * (1.0 - frac)
    elif decay == "cosine":
      scale = scale * 0.5 * (1.0 + jnp.cos(jnp.pi * frac))
    return lr * scale
  return schedule


def make_optimizer(opt_cfg: Any, num_steps: int) -> optax.GradientTransformation:
  """Global-norm clipping (`grad_clip`, off when <= 0) then AdamW (b1 0.9, b2 0.99, eps 1e-8,
  `weight_decay` masked by `decay_mask`) on `learning_rate_schedule`."""
  schedule = learning_rate_schedule(opt_cfg, num_steps)
  parts = []
  clip = _cfg_get(opt_cfg, "grad_clip", 1.0)
  if clip is not None and clip > 0:
    parts.append(optax.clip_by_global_norm(float(clip)))
  parts.append(optax.adamw(
      schedule, b1=float(_cfg_get(opt_cfg, "b1", 0.9)), b2=float(_cfg_get(opt_cfg, "b2", 0.99)),
      eps=float(_cfg_get(opt_cfg, "eps", 1e-8)),
      weight_decay=float(_cfg_get(opt_cfg, "weight_decay", 0.01)), mask=decay_mask))
  return optax.chain(*parts)


def create_train_state(model: model_lib.VDM, optimizer: optax.GradientTransformation,
                       seed: int) -> TrainState:
  """A fresh state: parameters from `seed`, EMA equal to them, the optimizer's initial state."""
  key_init, key_train = jax.random.split(jax.random.PRNGKey(seed))
  params = model_lib.init(model, key_init)["params"]
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params),
                    opt_state=optimizer.init(params), rng=key_train)


def ema_decay(ema_rate: float, step: Array) -> Array:
  """The EMA's decay at (0-based) update `step`: min(ema_rate, (1 + step) / (10 + step)), so
  that early averages are not dominated by the initialisation."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(ema_rate, (1.0 + step) / (10.0 + step))


# ============================================================================ the objective


def loss_fn(model: model_lib.VDM, params: PyTree, batch: Mapping[str, Array], rng: Array,
            train: bool = True) -> tuple[Array, dict]:
  """The training objective and its metrics for one batch: the one place the train step gets
  its loss from.

  Args:
    model: the VDM module; its `objective` method gives the per-example training objective
      (the negative ELBO with the default weighting 'elbo' and schedule_objective 'elbo'; see
      config.model.weighting / schedule_objective) and the bound from the same draws.
    params: its 'params' collection.
    batch: 'image' integer [B, H, W, C] (and 'label' int [B] for a class-conditional model; the
      model replaces labels by the null label with probability config.model.label_dropout).
    rng: key for this step; split into the model's 'sample' and 'dropout' streams.
    train: dropout (and label dropout) on.

  Returns:
    (objective, metrics): objective = the batch mean of the per-example objective in nats
    (what the gradient is taken of); metrics 'train/loss' (the same), and the bound:
    'train/bpd' with its terms 'train/recon_bpd', 'train/prior_bpd', 'train/diffusion_bpd'
    (bits per dimension; train/bpd = train/loss / (H W C ln 2) with the ELBO objective).
  """
  k_sample, k_dropout = jax.random.split(rng)
  labels = batch["label"].astype(jnp.int32) if model.num_classes else None
  per_example, bound = model.apply({"params": params}, batch["image"], labels, train=train,
                                   rngs={"sample": k_sample, "dropout": k_dropout},
                                   method=model.objective)
  objective = jnp.mean(per_example)
  num_dims = math.prod(model.image_shape)
  bpd = lambda v: likelihood.nats_to_bpd(jnp.mean(v), num_dims)
  metrics = {
      "train/loss": objective,
      "train/bpd": bpd(bound.total),
      "train/recon_bpd": bpd(bound.recon),
      "train/prior_bpd": bpd(bound.prior),
      "train/diffusion_bpd": bpd(bound.diffusion),
  }
  return objective, metrics


# ============================================================================ the step


def _all_finite(tree: PyTree) -> Array:
  leaves = jax.tree_util.tree_leaves(tree)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def make_train_step(model: model_lib.VDM, optimizer: optax.GradientTransformation,
                    mesh: jax.sharding.Mesh, *, ema_rate: float = 0.9999,
                    lr_schedule: Callable[[Array], Array] | None = None,
                    label_dropout: float = 0.0, unroll: bool | None = None) -> Callable:
  """The jit-compiled, data-parallel train step.

  Returns `step_fn(state, batches) -> (state, metrics)`: `batches` is a dict of arrays stacked
  over steps, [S, B, ...] with the global batch B (split over 'data' on axis 1); it runs S
  optimizer steps with `lax.scan`. `metrics` holds [S] arrays per key: the `loss_fn` metrics and
  'train/grad_norm' (before clipping), 'train/lr', 'train/gamma_min', 'train/gamma_max' and
  'train/finite' (loss, gradients and new parameters all finite). `state` is donated.

  unroll: run the S steps as S unrolled copies instead of `lax.scan` (compile time grows with S).
  Default: unrolled on CPU, where a scanned backward pass is much slower, scanned elsewhere.
  label_dropout: must be 0; label dropout is the model's (config.model.label_dropout).
  """
  if label_dropout:
    raise ValueError("label dropout is a model setting: set config.model.label_dropout "
                     f"(got label_dropout={label_dropout} here).")
  grad_fn = jax.value_and_grad(functools.partial(loss_fn, model, train=True), has_aux=True)

  def one_step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    (objective, metrics), grads = grad_fn(state.params, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    decay = ema_decay(ema_rate, state.step)
    ema = jax.tree_util.tree_map(lambda e, p: decay * e + (1.0 - decay) * p,
                                 state.ema_params, params)
    grad_norm = optax.tree.norm(grads)
    gammas = model.apply({"params": params}, jnp.array([0.0, 1.0], jnp.float32),
                         method=model.gamma)
    metrics = dict(metrics)
    metrics["train/grad_norm"] = grad_norm
    metrics["train/gamma_min"] = gammas[0]
    metrics["train/gamma_max"] = gammas[1]
    if lr_schedule is not None:
      metrics["train/lr"] = jnp.asarray(lr_schedule(state.step), jnp.float32)
    metrics["train/finite"] = (jnp.isfinite(objective) & jnp.isfinite(grad_norm)
                               & _all_finite(params))
    new_state = state.replace(step=state.step + 1, params=params, ema_params=ema,
                              opt_state=opt_state)
    return new_state, metrics

  if unroll is None:
    unroll = mesh.devices.flat[0].platform == "cpu"

  def multi_step(state, batches):
    if not unroll:
      return jax.lax.scan(one_step, state, batches)
    # XLA:CPU runs the backward pass of convolutions inside a while loop (what lax.scan lowers
    # to) about 25x slower than outside one; there the steps are unrolled instead.
    num = jax.tree_util.tree_leaves(batches)[0].shape[0]
    per_step = []
    for i in range(num):
      state, metrics = one_step(state, jax.tree_util.tree_map(lambda x: x[i], batches))
      per_step.append(metrics)
    return state, jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *per_step)

  repl = parallel.replicated(mesh)
  return jax.jit(multi_step, in_shardings=(repl, parallel.data_sharding(mesh, 1)),
                 out_shardings=(repl, repl), donate_argnums=(0,))


# Memoised builders: calling train_and_evaluate / evaluate_checkpoint again in one process (a
# notebook, the tests) reuses the compiled functions instead of compiling them again.
_OPTIMIZER_KEYS = ("lr", "warmup_steps", "decay", "weight_decay", "grad_clip", "b1", "b2", "eps")


@functools.lru_cache(maxsize=16)
def _optimizer_from_key(items: tuple, num_steps: int):
  cfg = {k: v for k, v in items if v is not None}
  return make_optimizer(cfg, num_steps), learning_rate_schedule(cfg, num_steps)


def optimizer_and_schedule(opt_cfg: Any, num_steps: int
                           ) -> tuple[optax.GradientTransformation, Callable[[Array], Array]]:
  """(make_optimizer(...), learning_rate_schedule(...)), the same objects for equal settings."""
  items = tuple((k, _cfg_get(opt_cfg, k)) for k in _OPTIMIZER_KEYS)
  decays = _cfg_get(opt_cfg, "decay", "none") != "none"
  return _optimizer_from_key(items, int(num_steps) if decays else 0)


compiled_train_step = functools.lru_cache(maxsize=8)(make_train_step)
compiled_train_step.__doc__ = "`make_train_step`, memoised on its (hashable) arguments."


@functools.lru_cache(maxsize=8)
def _init_params_fn(model, mesh):
  return jax.jit(lambda key: model_lib.init(model, key)["params"],
                 out_shardings=parallel.replicated(mesh))


def init_state(model: model_lib.VDM, optimizer: optax.GradientTransformation, seed: int,
               mesh: jax.sharding.Mesh) -> TrainState:
  """`create_train_state(model, optimizer, seed)`, compiled, with every leaf replicated over
  the mesh (the parameter initialisation is compiled once per model and mesh)."""
  key_init, key_train = jax.random.split(jax.random.PRNGKey(int(seed)))
  params = _init_params_fn(model, mesh)(key_init)
  repl = parallel.replicated(mesh)
  ema, opt_state = jax.jit(lambda p: (jax.tree_util.tree_map(jnp.copy, p), optimizer.init(p)),
                           out_shardings=repl)(params)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), repl), params=params,
                    ema_params=ema, opt_state=opt_state, rng=jax.device_put(key_train, repl))


def abstract_state(model: model_lib.VDM, optimizer: optax.GradientTransformation, seed: int,
                   mesh: jax.sharding.Mesh) -> TrainState:
  """The state's shapes, dtypes and (replicated) shardings, without computing it."""
  shapes = jax.eval_shape(functools.partial(create_train_state, model, optimizer, seed))
  repl = parallel.replicated(mesh)
  return jax.tree_util.tree_map(
      lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


# ============================================================================ config


def _dataset_info(config) -> dict:
  return data.dataset_info(config.data.name)


def validate_config(config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh | None = None) -> model_lib.VDM:
  """Checks a config before any compute; raises ValueError saying what to change. Returns the
  model it builds."""
  for group in ("data", "model", "training", "optimizer"):
    if group not in config:
      raise ValueError(f"config has no '{group}' group; start from a config in "
                       "experiments/configs/ (e.g. quickstart.py).")
  m = config.model
  g0, g1 = _cfg_get(m, "gamma_min", -13.3), _cfg_get(m, "gamma_max", 5.0)
  if not g0 < g1:
    raise ValueError(f"config.model.gamma_min ({g0}) must be < config.model.gamma_max ({g1}): "
                     "set --config.model.gamma_min below --config.model.gamma_max "
                     "(e.g. -13.3 and 5.0).")
  weighting = _cfg_get(m, "weighting", "elbo")
  if weighting not in losses.WEIGHTINGS:
    raise ValueError(f"config.model.weighting must be one of {losses.WEIGHTINGS}, got "
                     f"{weighting!r}.")
  objective = _cfg_get(m, "schedule_objective", "elbo")
  if objective not in losses.SCHEDULE_OBJECTIVES:
    raise ValueError(f"config.model.schedule_objective must be one of "
                     f"{losses.SCHEDULE_OBJECTIVES}, got {objective!r}.")
  if _cfg_get(config.training, "label_dropout", 0.0):
    raise ValueError("config.training.label_dropout is not used: label dropout is a model "
                     "setting, set config.model.label_dropout instead.")

  info = _dataset_info(config)   # ValueError for an unknown dataset name
  shape = tuple(_cfg_get(m, "image_shape", (28, 28, 1)))
  if shape != tuple(info["shape"]):
    raise ValueError(
        f"config.model.image_shape={shape} does not match dataset {config.data.name!r}, whose "
        f"images are {tuple(info['shape'])}: set config.model.image_shape = "
        f"{tuple(info['shape'])}.")
  num_classes = _cfg_get(m, "num_classes", 0)
  if num_classes and num_classes != info["num_classes"]:
    raise ValueError(
        f"config.model.num_classes={num_classes} but dataset {config.data.name!r} has "
        f"{info['num_classes']} classes: set config.model.num_classes to {info['num_classes']} "
        "(class-conditional) or 0 (unconditional).")

  t = config.training
  for key in ("num_steps",):
    if int(_cfg_get(t, key, 0)) < 0:
      raise ValueError(f"config.training.{key} must be >= 0.")
  if int(_cfg_get(t, "steps_per_call", 1)) < 1:
    raise ValueError("config.training.steps_per_call must be >= 1.")
  decay = _cfg_get(config.optimizer, "decay", "none")
  if decay not in DECAYS:
    raise ValueError(f"config.optimizer.decay must be one of {DECAYS}, got {decay!r}.")
  ema_rate = float(_cfg_get(config.optimizer, "ema_rate", 0.9999))
  if not 0.0 <= ema_rate < 1.0:
    raise ValueError(f"config.optimizer.ema_rate must be in [0, 1), got {ema_rate}.")

  mesh = parallel.make_mesh() if mesh is None else mesh
  parallel.check_batch_size(int(t.batch_size), mesh, "config.training.batch_size")
  if "eval" in config:
    parallel.check_batch_size(int(_cfg_get(config.eval, "batch_size", t.batch_size)), mesh,
                              "config.eval.batch_size")
  return model_lib.from_config(m)   # network / schedule names and the model's own checks


def _write_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  if jax.process_index() == 0:
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2, sort_keys=True))


# ============================================================================ eval & sampling


def evaluate_params(model: model_lib.VDM, params: PyTree, config: ml_collections.ConfigDict,
                    mesh: jax.sharding.Mesh, key: Array | None = None) -> dict:
  """Test-set bpd of `params` on the whole test split (`evaluation.evaluate`), with 'eval/'
  prefixed keys: eval/bpd, eval/bpd_se, eval/recon_bpd, eval/prior_bpd, eval/diffusion_bpd,
  eval/num_images, eval/seconds. config.eval: batch_size (global), num_time_samples, T (None:
  the model's), max_batches (None: the whole split; else only the first batches)."""
  from vdm_jax import evaluation
  ecfg = config.get("eval", ml_collections.ConfigDict())
  global_batch = int(_cfg_get(ecfg, "batch_size", config.training.batch_size))
  batch = parallel.per_process_batch(global_batch, mesh, "config.eval.batch_size")
  batches = data.get_dataset(config.data.name, "test", batch,
                             data_dir=_cfg_get(config.data, "data_dir"))
  max_batches = _cfg_get(ecfg, "max_batches")
  if max_batches:   # a quick look at part of the split (None / 0: the whole split)
    batches = itertools.islice(batches, int(max_batches))
  if key is None:
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.training.seed)), 1)
  start = time.perf_counter()
  result = evaluation.evaluate(
      model, {"params": params}, batches, key, T=_cfg_get(ecfg, "T"),
      num_time_samples=int(_cfg_get(ecfg, "num_time_samples", 1)),
      put_batch=lambda b: parallel.shard_batch(b, mesh))
  out = {f"eval/{k}": v for k, v in result.items()}
  out["eval/seconds"] = time.perf_counter() - start
  return out


def sample_params(model: model_lib.VDM, params: PyTree, config: ml_collections.ConfigDict,
                  key: Array | None = None, num_samples: int | None = None) -> np.ndarray:
  """`num_samples` (default config.sampling.num_samples) images, int32 [N, H, W, C], from
  `sampling.sample_model` with the config.sampling settings; a class-conditional model gets the
  labels 0, 1, 2, ... cyclically."""
  from vdm_jax import sampling
  scfg = config.get("sampling", ml_collections.ConfigDict())
  n = int(num_samples or _cfg_get(scfg, "num_samples", 64))
  if key is None:
    key = jax.random.fold_in(jax.random.PRNGKey(int(config.training.seed)), 2)
  labels = jnp.arange(n, dtype=jnp.int32) % model.num_classes if model.num_classes else None
  kwargs = dict(T=int(_cfg_get(scfg, "T", 256)), sampler=_cfg_get(scfg, "sampler", "ancestral"),
                eta=float(_cfg_get(scfg, "eta", 1.0)), labels=labels)
  if model.num_classes:
    kwargs["guidance_weight"] = float(_cfg_get(scfg, "guidance_weight", 0.0))
  images = sampling.sample_model(model, {"params": params}, key, n, **kwargs)
  return np.asarray(jax.device_get(images))


# ============================================================================ the loop


class TrainingDiverged(FloatingPointError):
  """The loss (or gradients, or parameters) became NaN or infinite."""


def _next_boundary(step: int, num_steps: int, intervals: list[int]) -> int:
  nxt = num_steps
  for every in intervals:
    if every and every > 0:
      nxt = min(nxt, (step // every + 1) * every)
  return nxt


def _due(step: int, every: int | None) -> bool:
  return bool(every) and every > 0 and step % every == 0


def _stack_batches(it: Iterator[dict], n: int) -> dict[str, np.ndarray]:
  batches = [next(it) for _ in range(n)]
  return {k: np.stack([b[k] for b in batches]) for k in batches[0] if k in ("image", "label")}


class _Pending:
  """Metrics of train calls not yet looked at (device arrays; fetched at log / save time)."""

  def __init__(self):
    self.items: list[tuple[int, Mapping[str, Array]]] = []

  def add(self, first_step: int, metrics: Mapping[str, Array]) -> None:
    self.items.append((first_step, metrics))

  def collect(self) -> tuple[dict[str, np.ndarray], list[int]]:
    """Fetches everything: ({key: values over steps}, [1-based step numbers]); clears."""
    fetched = jax.device_get([m for _, m in self.items])
    steps: list[int] = []
    merged: dict[str, list] = {}
    for (first, _), m in zip(self.items, fetched):
      n = len(next(iter(m.values())))
      steps.extend(range(first + 1, first + n + 1))
      for k, v in m.items():
        merged.setdefault(k, []).append(np.asarray(v))
    self.items = []
    return {k: np.concatenate(v) for k, v in merged.items()}, steps


def _check_finite(metrics: dict[str, np.ndarray], steps: list[int], ckpt, config) -> None:
  if not steps or bool(np.all(metrics["train/finite"])):
    return
  i = int(np.argmin(metrics["train/finite"]))
  bad_step = steps[i]
  loss = float(metrics["train/loss"][i])
  grad = float(metrics["train/grad_norm"][i])
  ckpt.wait()
  last = ckpt.latest_step()
  kept = (f"the last good checkpoint (step {last}) in {ckpt.directory} is kept"
          if last is not None else "no checkpoint had been written yet")
  raise TrainingDiverged(
      f"Training diverged at step {bad_step}: loss {loss}, gradient norm {grad} (non-finite "
      f"loss, gradients or parameters). This state was not saved; {kept}. Lower "
      f"config.optimizer.lr (now {_cfg_get(config.optimizer, 'lr')}), check "
      "config.optimizer.grad_clip, or resume from the checkpoint with other settings.")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       *, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Trains `config` in `workdir`, resuming from its latest checkpoint, and evaluates.

  Everything about the run comes from the config (see experiments/configs/). Logs every
  training.log_every steps, evaluates the EMA parameters on the test split every eval_every
  steps and at the end, writes sample grids every sample_every steps and at the end, and
  checkpoints every checkpoint_every steps and at the end (keeping keep_checkpoints). An interval
  of 0 turns that periodic event off (the final one still happens).

  Returns the last record written to metrics.jsonl with eval results (or the last train record).
  Raises TrainingDiverged (naming the step) when the loss becomes non-finite; that state is not
  saved.
  """
  mesh = parallel.make_mesh() if mesh is None else mesh
  model = validate_config(config, mesh)
  t, ocfg = config.training, config.optimizer
  num_steps = int(t.num_steps)
  global_batch = int(t.batch_size)
  batch = parallel.per_process_batch(global_batch, mesh)
  seed = int(t.seed)
  data_dir = _cfg_get(config.data, "data_dir")
  # Load the data first: a missing dataset fails here, before any compilation.
  data.get_dataset(config.data.name, "train", batch, seed=seed, data_dir=data_dir)

  workdir = Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  _write_config(config, workdir)
  is_main = jax.process_index() == 0
  writer = logging_utils.MetricsWriter(workdir, enabled=is_main)
  ckpt = checkpoint_lib.Checkpointer(workdir / "checkpoints",
                                     max_to_keep=_cfg_get(t, "keep_checkpoints", 3))
  try:
    return _train_loop(config, workdir, model, mesh, writer, ckpt, num_steps, global_batch,
                       batch, seed, data_dir)
  finally:
    ckpt.close()
    writer.close()


def _train_loop(config, workdir: Path, model, mesh, writer, ckpt, num_steps, global_batch,
                batch, seed, data_dir) -> dict:
  t, ocfg = config.training, config.optimizer
  optimizer, lr_fn = optimizer_and_schedule(ocfg, num_steps)
  restored = ckpt.restore(abstract_state(model, optimizer, seed, mesh))
  if restored is not None:
    state, meta = restored
    step = int(state.step)
    logger.info("Resumed from the checkpoint at step %d in %s.", step, ckpt.directory)
    if meta.get("global_batch_size", global_batch) != global_batch:
      logger.warning("The checkpoint was trained with global batch %s, this config has %d: the "
                     "data order after resuming differs from an uninterrupted run.",
                     meta.get("global_batch_size"), global_batch)
  else:
    state = init_state(model, optimizer, seed, mesh)
    step = 0

  weighting = _cfg_get(config.model, "weighting", "elbo")
  schedule_objective = _cfg_get(config.model, "schedule_objective", "elbo")
  num_params = model_lib.param_count(state.params)
  logger.info(
      "Training %s on %s: %d parameters, network %s, schedule %s, weighting %s, schedule "
      "objective %s; global batch %d on %d devices (%d processes); steps %d -> %d.",
      type(model.network).__name__, config.data.name, num_params,
      _cfg_get(config.model, "network", "unet"), model.schedule, weighting, schedule_objective,
      global_batch, mesh.devices.size, jax.process_count(), step, num_steps)
  writer.write(step, {"event": "start", "weighting": weighting,
                      "schedule_objective": schedule_objective, "num_params": num_params,
                      "num_devices": int(mesh.devices.size), "global_batch": global_batch})
  writer.write_text(step, "config", "```\n" + config.to_json_best_effort(indent=2) + "\n```")

  steps_per_call = int(_cfg_get(t, "steps_per_call", 1))
  log_every = int(_cfg_get(t, "log_every", 100) or 0)
  eval_every = int(_cfg_get(t, "eval_every", 0) or 0)
  ckpt_every = int(_cfg_get(t, "checkpoint_every", 0) or 0)
  sample_every = int(_cfg_get(t, "sample_every", 0) or 0)
  train_step = compiled_train_step(model, optimizer, mesh,
                               ema_rate=float(_cfg_get(ocfg, "ema_rate", 0.9999)),
                               lr_schedule=lr_fn)
  train_iter = data.get_dataset(config.data.name, "train", batch, seed=seed, data_dir=data_dir,
                                start_batch=step)
  eval_key = jax.random.fold_in(jax.random.PRNGKey(seed), 1)
  sample_key = jax.random.fold_in(jax.random.PRNGKey(seed), 2)
  ckpt_meta = {"global_batch_size": global_batch, "seed": seed, "dataset": config.data.name}

  pending = _Pending()
  last_record: dict = {}
  mark_time, mark_step = time.perf_counter(), step
  first_call: Any = True   # then (steps, seconds) of the first call
  done_at: dict[str, int] = {}

  def do_eval(step):
    result = evaluate_params(model, state.ema_params, config, mesh, key=eval_key)
    logger.info("step %d: eval bpd %.4f +- %.4f (recon %.4f, prior %.4f, diffusion %.4f) on %d "
                "test images in %.1fs", step, result["eval/bpd"], result["eval/bpd_se"],
                result.get("eval/recon_bpd", float("nan")),
                result.get("eval/prior_bpd", float("nan")),
                result.get("eval/diffusion_bpd", float("nan")),
                result.get("eval/num_images", 0), result["eval/seconds"])
    return writer.write(step, result)

  def do_sample(step):
    start = time.perf_counter()
    images = sample_params(model, state.ema_params, config, key=sample_key)
    path = workdir / "samples" / f"step_{step}.png"
    if jax.process_index() == 0:
      grid = logging_utils.save_image_grid(images, path, vocab_size=model.vocab_size)
      writer.write_images(step, "samples", grid)
    logger.info("step %d: wrote %d samples to %s in %.1fs", step, len(images), path,
                time.perf_counter() - start)

  while step < num_steps:
    n = min(steps_per_call,
            _next_boundary(step, num_steps, [log_every, eval_every, ckpt_every, sample_every])
            - step)
    batches = parallel.shard_batch(_stack_batches(train_iter, n), mesh, batch_dim=1)
    if not model.num_classes:
      batches.pop("label", None)
    state, metrics = train_step(state, batches)
    pending.add(step, metrics)
    step += n
    if first_call is True:
      jax.block_until_ready(state)
      first_call = (n, time.perf_counter() - mark_time)
      logger.info("First train call (compilation + %d step%s): %.1fs", n, "s" * (n > 1),
                  first_call[1])
      mark_time, mark_step = time.perf_counter(), step

    final = step == num_steps
    do_log = _due(step, log_every) or final
    events = {"eval": _due(step, eval_every) or final,
              "sample": _due(step, sample_every) or final,
              "checkpoint": _due(step, ckpt_every) or final}
    if not (do_log or any(events.values())):
      continue
    values, steps = pending.collect()
    _check_finite(values, steps, ckpt, config)
    now = time.perf_counter()
    if do_log and steps:
      if step > mark_step:
        rate = (step - mark_step) / max(now - mark_time, 1e-9)
      else:   # a log right after the first call: its rate, compilation included
        rate = first_call[0] / first_call[1]
      record = {k: float(np.mean(v)) for k, v in values.items() if k != "train/finite"}
      record.update({"steps_per_s": rate, "images_per_s": rate * global_batch,
                     "epoch": step * global_batch / _dataset_info(config)["num_train"]})
      last_record = writer.write(step, record)
      eta = (num_steps - step) / rate if rate > 0 else float("nan")
      logger.info("step %d/%d: train bpd %.4f (recon %.4f prior %.4f diffusion %.4f), "
                  "%.2f steps/s, %.1f images/s, ETA %s", step, num_steps, record["train/bpd"],
                  record["train/recon_bpd"], record["train/prior_bpd"],
                  record["train/diffusion_bpd"], rate, rate * global_batch,
                  logging_utils.format_duration(eta))
    if events["checkpoint"]:
      ckpt.save(step, state, ckpt_meta)
      done_at["checkpoint"] = step
    if events["eval"]:
      last_record = do_eval(step)
      done_at["eval"] = step
    if events["sample"]:
      do_sample(step)
      done_at["sample"] = step
    writer.flush()
    if do_log or any(events.values()):
      mark_time, mark_step = time.perf_counter(), step

  # Already at num_steps when started (a finished run): evaluate and sample the final state.
  if done_at.get("eval") != step:
    last_record = do_eval(step)
  if done_at.get("sample") != step:
    do_sample(step)
  if done_at.get("checkpoint") != step and step not in ckpt.all_steps():
    ckpt.save(step, state, ckpt_meta)
  ckpt.wait()
  writer.flush()
  return last_record


# ============================================================================ eval / sample modes


def restore_ema_params(config: ml_collections.ConfigDict, workdir: str,
                       step: int | None = None, mesh: jax.sharding.Mesh | None = None):
  """(model, state, step) from the latest (or `step`) checkpoint in `<workdir>/checkpoints`."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  model = validate_config(config, mesh)
  optimizer, _ = optimizer_and_schedule(config.optimizer, int(config.training.num_steps))
  ckpt = checkpoint_lib.Checkpointer(Path(workdir) / "checkpoints", max_to_keep=None)
  try:
    if step is None and ckpt.latest_step() is None:
      raise FileNotFoundError(
          f"No checkpoint in {Path(workdir) / 'checkpoints'}: train first (--mode=train with this "
          "--workdir), or point --workdir at a folder holding checkpoints/.")
    state, _ = ckpt.restore(abstract_state(model, optimizer, int(config.training.seed), mesh),
                            step=step)
  finally:
    ckpt.close()
  return model, state, int(state.step)


def evaluate_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                        *, mesh: jax.sharding.Mesh | None = None) -> dict:
  """Test-set bpd of a checkpoint's EMA parameters. Appends it to metrics.jsonl (with
  "mode": "eval") and writes `<workdir>/eval_step_<step>.json`; returns the record."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  model, state, step = restore_ema_params(config, workdir, step, mesh)
  result = evaluate_params(model, state.ema_params, config, mesh)
  writer = logging_utils.MetricsWriter(workdir, enabled=jax.process_index() == 0,
                                       tensorboard=False)
  record = writer.write(step, {"mode": "eval", **result})
  if jax.process_index() == 0:
    (Path(workdir) / f"eval_step_{step}.json").write_text(json.dumps(record, indent=2) + "\n")
  writer.close()
  return record


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str, step: int | None = None,
                      num_samples: int | None = None, *, mesh: jax.sharding.Mesh | None = None,
                      seed: int | None = None) -> dict:
  """Samples from a checkpoint's EMA parameters; writes `<workdir>/samples_step_<step>.png` (a
  grid) and `.npz` (images uint8 [N, H, W, C], labels when class-conditional). Returns the
  paths and the images."""
  mesh = parallel.make_mesh() if mesh is None else mesh
  model, state, step = restore_ema_params(config, workdir, step, mesh)
  key = None if seed is None else jax.random.PRNGKey(seed)
  images = sample_params(model, state.ema_params, config, key=key, num_samples=num_samples)
  png = Path(workdir) / f"samples_step_{step}.png"
  npz = Path(workdir) / f"samples_step_{step}.npz"
  if jax.process_index() == 0:
    logging_utils.save_image_grid(images, png, vocab_size=model.vocab_size)
    arrays = {"images": images.astype(np.uint8 if model.vocab_size <= 256 else np.int32)}
    if model.num_classes:
      arrays["labels"] = np.arange(len(images)) % model.num_classes
    np.savez_compressed(npz, **arrays)
  logger.info("Wrote %d samples of step %d to %s and %s", len(images), step, png, npz)
  return {"png": str(png), "npz": str(npz), "images": images, "step": step}
