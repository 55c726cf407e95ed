"""The official VDM code's train step, timed like `bench.py --what=train`, from a user's checkout.

    git clone https://github.com/google-research/vdm /tmp/vdm_official
    python benchmarks/official_bench.py --official_repo=/tmp/vdm_official --batch_size=8
    python benchmarks/bench.py --config=paper --what=train          # this project's, the same net

Nothing of the official code is copied here: its own `Experiment_VDM.get_model_and_params`,
`get_optimizer` (AdamW with its decay mask, clipping when configured), `get_lr_schedule`,
`train_step` (grad of its `loss_fn`, pmean, its `TrainState.apply_gradients` with EMA, its metric
image grids) and its `configs/cifar10.py` (the paper's CIFAR-10 model: n_embd 128, 32 layers,
dropout 0.1, learnable_scalar schedule) are run as its `Experiment.__init__` wires them
(`pmap(partial(lax.scan, partial(train_step, rng)))`), with `training.substeps` = 1 so that one
call is one optimizer step, as in `bench.py`; `--unscanned` calls the same `train_step` without
the scan (on CPU, where XLA runs convolution gradients inside a loop far slower, this is the
fair comparison of the two networks' steps; as wired, the official step is slower still). The dataset is not built: the batch is random
uint8 images [1 device, 1 substep, batch, 32, 32, 3] and zero conditioning, as the speed does
not depend on the pixels.

Its modules import TensorFlow, TensorFlow Datasets and clu at the top for the data pipeline,
logging and checkpoints, none of which the step calls; where they are not installed an inert
stand-in module is registered (listed under "stand_ins" in the output; using one raises). Where
this jax has no `jax.tree_map` or `jax.tree_multimap` (removed from jax; the official train step
calls both), they are set to `jax.tree_util.tree_map`, and where flax initialises to a dict (flax >= 0.7) the parameters
are frozen, as the official decay mask is a FrozenDict ("shims").

Prints ONE JSON object with bench.py's train fields (compile_s from JAX's compile events,
compile_wall_s, first_step_s, step_s, step_s_stats, images_per_s, param_count, peak_rss_mib,
other_processes_cpu_cores, the device) and the checkout's commit. Run one measurement per
process (peak RSS).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO / "benchmarks") not in sys.path:
  sys.path.insert(0, str(REPO / "benchmarks"))

import flax  # noqa: E402
import flax.jax_utils  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from bench_timing import (  # noqa: E402  (benchmarks/bench_timing.py)
    CompileTimer, CpuWatch, device_info, peak_rss_mib, r, random_images, summary, timed)

# Modules the official code imports at the top for data, logging and checkpoints only.
STAND_IN_MODULES = (
    "tensorflow", "tensorflow_datasets", "clu", "clu.periodic_actions", "clu.parameter_overview",
    "clu.checkpoint", "clu.deterministic_data", "clu.metric_writers",
    "clu.metric_writers.async_writer", "clu.metric_writers.logging_writer",
    "clu.metric_writers.summary_writer", "clu.metric_writers.interface",
    "clu.metric_writers.multi_writer")


def _unusable(name: str):
  def fail(*args, **kwargs):
    raise RuntimeError(f"{name} is a stand-in (its module is not installed); the timed train "
                       "step does not use it.")
  return fail


class _StandInType(type):
  """Classes whose attributes are stand-in classes again (tf.data.experimental.AUTOTUNE)."""

  def __getattr__(cls, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _stand_in(f"{cls.__qualname__}.{name}")


def _stand_in(name: str) -> type:
  """An inert class: it can be imported, read from and subclassed, and raises when used."""
  return _StandInType(name.rpartition(".")[2], (), {"__qualname__": name,
                                                    "__init__": _unusable(name)})


class _StandIn(types.ModuleType):
  """A module whose every attribute is a stand-in class."""

  def __getattr__(self, name):
    if name.startswith("__"):
      raise AttributeError(name)
    return _stand_in(f"{self.__name__}.{name}")


def install_stand_ins() -> list[str]:
  """Registers a stand-in for each STAND_IN_MODULES entry that cannot be imported."""
  installed = []
  for name in STAND_IN_MODULES:
    root = name.split(".")[0]
    try:
      real = name in sys.modules or (root not in installed
                                     and importlib.util.find_spec(name) is not None)
    except (ImportError, ValueError):
      real = False
    if not real:
      sys.modules[name] = _StandIn(name)
      if "." in name:
        parent, _, child = name.rpartition(".")
        setattr(sys.modules[parent], child, sys.modules[name])
      installed.append(name)
  return installed


def import_official(checkout: Path):
  """The checkout as the package `vdm` (its modules import each other as vdm.*)."""
  if not (checkout / "experiment_vdm.py").is_file():
    raise SystemExit(f"--official_repo={checkout}: no experiment_vdm.py there; give a checkout "
                     "of https://github.com/google-research/vdm.")
  parent = Path(tempfile.mkdtemp(prefix="vdm_official_"))
  (parent / "vdm").symlink_to(checkout.resolve(), target_is_directory=True)
  sys.path.insert(0, str(parent))
  shims = []
  for old in ("tree_map", "tree_multimap"):   # removed from jax; the official step calls both
    if not hasattr(jax, old):
      setattr(jax, old, jax.tree_util.tree_map)
      shims.append(f"jax.{old} = jax.tree_util.tree_map")
  stand_ins = install_stand_ins()
  import vdm.experiment_vdm
  import vdm.train_state
  config_spec = importlib.util.spec_from_file_location("official_cifar10",
                                                       checkout / "configs" / "cifar10.py")
  configs = importlib.util.module_from_spec(config_spec)
  config_spec.loader.exec_module(configs)
  return vdm, configs, shims, stand_ins


def _commit(checkout: Path) -> str | None:
  try:
    return subprocess.run(["git", "-C", str(checkout), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--official_repo", required=True, help="a google-research/vdm checkout")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--steps", type=int, default=10, help="timed steps (median)")
  p.add_argument("--warmup", type=int, default=2, help="untimed steps after the first")
  p.add_argument("--n_layer", type=int, default=None, help="override sm_n_layer (tests)")
  p.add_argument("--n_embd", type=int, default=None, help="override sm_n_embd (tests)")
  p.add_argument("--unscanned", action="store_true",
                 help="call its train_step directly instead of inside lax.scan over the "
                      "substeps (XLA:CPU runs convolution gradients inside a loop many times "
                      "slower; this project unrolls on CPU for that reason)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also append the JSON line to this file")
  return p


def main(argv=None) -> dict:
  args = make_parser().parse_args(argv)
  checkout = Path(args.official_repo).expanduser()
  timer = CompileTimer()
  vdm, configs, shims, stand_ins = import_official(checkout)
  config = configs.get_config()
  config.training.substeps = 1
  config.training.batch_size_train = args.batch_size
  if args.n_layer is not None:
    config.model.sm_n_layer = args.n_layer
  if args.n_embd is not None:
    config.model.sm_n_embd = args.n_embd

  # What Experiment.__init__ does, less the dataset and the eval and sample steps.
  exp = vdm.experiment_vdm.Experiment_VDM.__new__(vdm.experiment_vdm.Experiment_VDM)
  exp.config = config
  rng = jax.random.PRNGKey(args.seed)
  rng, model_rng, train_rng = jax.random.split(rng, 3)
  exp.model, params = exp.get_model_and_params(model_rng)
  if not isinstance(params, flax.core.FrozenDict):
    # flax >= 0.7 initialises to dicts; the official optimizer's decay mask is a FrozenDict.
    params = flax.core.freeze(params)
    shims.append("params = flax.core.freeze(init's dict)")
  exp.state = vdm.train_state.TrainState.create(apply_fn=exp.model.apply, variables=params,
                                                optax_optimizer=exp.get_optimizer)
  exp.lr_schedule = exp.get_lr_schedule()
  train_step = functools.partial(exp.train_step, train_rng)
  if args.unscanned:   # the same step without the lax.scan over substeps (see --unscanned)
    def one_substep(state, batch):
      state, metrics = train_step(state, jax.tree_util.tree_map(lambda x: x[0], batch))
      return state, jax.tree_util.tree_map(lambda x: x[None], metrics)
    step = jax.pmap(one_substep, "batch")
  else:
    step = jax.pmap(functools.partial(jax.lax.scan, train_step), "batch")

  images = random_images(np.random.default_rng(args.seed), args.batch_size, (32, 32, 3), 256)
  batch = {"images": images[None, None], "conditioning": np.zeros((1, 1, args.batch_size))}
  state = flax.jax_utils.replicate(exp.state, jax.local_devices()[:1])   # as the official loop
  result = {**device_info(), "code": "official", "official_commit": _commit(checkout),
            "batch_size": args.batch_size, "unscanned": args.unscanned,
            "n_layer": config.model.sm_n_layer,
            "n_embd": config.model.sm_n_embd, "shims": shims, "stand_ins": stand_ins}
  t0 = time.perf_counter()
  watch = CpuWatch()
  timer.reset()
  compiled = step.lower(state, batch).compile()
  compile_wall = time.perf_counter() - t0
  result.update(timer.snapshot())
  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], batch)
    return holder["state"], metrics

  t1 = time.perf_counter()
  _, metrics = jax.block_until_ready(one())
  first = time.perf_counter() - t1
  timed(one, args.warmup)
  times = timed(one, args.steps)
  step_s = statistics.median(times)
  bpd = float(np.asarray(metrics["scalars"]["train_bpd"]).ravel()[-1])
  result.update({
      "param_count": int(sum(np.size(x) for x in jax.tree_util.tree_leaves(params))),
      "compile_wall_s": r(compile_wall), "first_step_s": r(first), "step_s": r(step_s),
      "step_s_stats": {k: (r(v) if isinstance(v, float) else v)
                       for k, v in summary(times).items()},
      "images_per_s": r(args.batch_size / step_s), "loss_finite": bool(np.isfinite(bpd)),
      "train_bpd": r(bpd), "total_s": r(time.perf_counter() - t0),
      "other_processes_cpu_cores": watch.other_load(), "peak_rss_mib": peak_rss_mib()})
  line = json.dumps(result)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  return result


if __name__ == "__main__":
  main()
