"""Throughput, compile time, sampling speed and peak memory of one named config, as ONE JSON object.

    python benchmarks/bench.py --config=small --what=train
    python benchmarks/bench.py --config=paper --what=train --remat=true
    python benchmarks/bench.py --config=small --what=sample --sample_T=20
    python benchmarks/bench.py --config=quickstart --what=eval

Configs (see `CONFIGS`; each is experiments/configs/base.py's `get_config()` plus overrides, and
goes through `vdm_jax.config.resolve` for one device, so a bad override gets its error):
  quickstart  experiments/configs/quickstart.py as it is (its batch size).
  small       the reference small model: VDMScoreNet n_embd=64, n_layer=4, Fourier features,
              28x28x1, batch 64 (1.32M parameters).
  paper       the paper's CIFAR-10 model: VDMScoreNet n_embd=128, n_layer=32, Fourier features,
              dropout 0.1, 32x32x3, batch 8 (30.6M parameters).

What is measured (one device, the first of `jax.devices()`):
  train   the real step: `training.make_train_step` (AdamW from `training.make_optimizer`, EMA,
          clipping, metrics), jitted, one optimizer step per call. `compile_s` is trace +
          lowering + XLA compile of that step; `step_s` the median of `--steps` timed calls after
          `--warmup` untimed ones (each call waits for its result).
  sample  `sampling.sample_model` with 16 images (`--sample_batch`), one whole compiled chain of
          `--sample_T` steps per sampler (ancestral, ddim with eta=0); the chain time (median of
          `--sample_repeats` calls after the compiling one) divided by the steps is
          `sample_step_s`; compile time is reported apart.
  eval    `evaluation.evaluate` (negative ELBO per image, one time sample) over `--eval_batches`
          batches of `--eval_batch_size` random images after a compiling call.

Every train and sample result also has `model_gflops_per_image` (the network's matrix-product
FLOPs per image, counted from its configuration: `flops.network_flops_per_image`; "train" = 3x
"forward"), `model_tflops_per_s` (train: per trained image; sample: per network evaluation) and
`mfu` against the device's dense peak for the compute dtype (`flops.PEAK_TFLOPS`; null where the
device is not tabulated, e.g. CPUs).

`peak_rss_mib` is the process's peak resident memory (ru_maxrss), so run one config and one `what`
per process. Nothing here sets XLA_FLAGS: whatever the environment sets is reported.
Random data (uint8 images) and freshly initialised parameters: the speed does not depend on them.
`--workdir` restores the EMA parameters of a run's latest checkpoint instead, with the run's own
config (`<workdir>/config.json`, read by `config.from_json`), e.g. for sample grids of a
trained model with DDIM and 50 steps:
`--what=sample --workdir=/tmp/qs --sample_T=50 --png=/tmp/qs_samples.png`.
"""
from __future__ import annotations

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))
if str(REPO / "benchmarks") not in sys.path:
  sys.path.insert(0, str(REPO / "benchmarks"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vdm_jax import evaluation, parallel, sampling, training  # noqa: E402
from vdm_jax import model as model_lib  # noqa: E402
from bench_configs import (  # noqa: E402,F401  (benchmarks/bench_configs.py)
    CONFIGS, SAMPLE_REPEATS, SAMPLE_T, _parse_bool, _positive_int, build_config)
from bench_timing import (  # noqa: E402,F401  (benchmarks/bench_timing.py)
    CompileTimer, CpuWatch, device_info, model_flops, peak_rss_mib, r, random_images, summary,
    timed)


def init_params(model, spec, args, mesh):
  """EMA parameters of a checkpoint (`--workdir`) or freshly initialised ones."""
  if args.workdir:
    _, state, step = training.restore_state(spec, args.workdir, mesh=mesh)
    return state.ema_params, {"checkpoint": str(args.workdir), "checkpoint_step": step}
  key = jax.random.PRNGKey(spec.training.seed)
  params = jax.jit(lambda k: model_lib.init_variables(model, k)["params"])(key)
  return params, {}


# ============================================================================ benchmarks


def bench_train(spec, model, args, mesh, timer) -> dict:
  batch = spec.training.batch_size
  optimizer = training.make_optimizer(spec.optimizer, spec.training.num_steps)
  state = training.create_state(model, optimizer, spec.training.seed, mesh)
  jax.block_until_ready(state)
  step_fn = training.make_train_step(model, optimizer, mesh, ema_rate=spec.optimizer.ema_rate)
  rng = np.random.default_rng(0)
  host = {"image": random_images(rng, batch, model.image_shape, model.vocab_size)[None]}
  if model.num_classes:
    host["label"] = rng.integers(0, model.num_classes, (1, batch)).astype(np.int32)
  batches = parallel.shard_batch(host, mesh, batch_dim=1)

  timer.reset()
  t0 = time.perf_counter()
  compiled = step_fn.lower(state, batches).compile()
  compile_wall = time.perf_counter() - t0
  compile_info = timer.snapshot()

  holder = {"state": state}

  def one():
    holder["state"], metrics = compiled(holder["state"], batches)
    return holder["state"], metrics

  t0 = time.perf_counter()
  _, metrics = jax.block_until_ready(one())
  first_step = time.perf_counter() - t0
  timed(one, args.warmup)
  times = timed(one, args.steps)
  _, metrics = jax.block_until_ready(one())
  step_s = statistics.median(times)
  out = {
      "param_count": model_lib.param_count(holder["state"].params),
      **compile_info,
      "compile_wall_s": r(compile_wall),
      "first_step_s": r(first_step),
      "step_s": r(step_s),
      "step_s_stats": {k: (r(v) if isinstance(v, float) else v) for k, v in summary(times).items()},
      "images_per_s": r(batch / step_s),
      "loss_finite": bool(np.all(np.asarray(metrics["train/finite"]))),
      "train_bpd": r(float(np.asarray(metrics["train/bpd"])[-1])),
  }
  out.update(model_flops(model, spec, out["images_per_s"], "train"))
  if args.flops:
    try:
      cost = compiled.cost_analysis()
      cost = cost[0] if isinstance(cost, (list, tuple)) else cost
      out["hlo_flops_per_step"] = float(cost.get("flops", float("nan")))
    except Exception as e:  # cost analysis is best effort
      out["hlo_flops_per_step"] = f"unavailable: {e}"
  if args.profile:
    jax.profiler.start_trace(args.profile)
    timed(one, 3)
    jax.profiler.stop_trace()
    out["profile"] = args.profile
  return out


def bench_sample(spec, model, args, mesh, timer) -> dict:
  params, extra = init_params(model, spec, args, mesh)
  variables = {"params": params}
  n = args.sample_batch
  T = args.sample_T or SAMPLE_T[args.config]
  labels = (jnp.arange(n, dtype=jnp.int32) % model.num_classes) if model.num_classes else None
  out = {"param_count": model_lib.param_count(params), "sample_T": T, "sample_batch": n,
         **extra}
  per_sampler = {}
  compile_total = 0.0
  grids = {}
  for sampler in args.samplers.split(","):
    key = jax.random.PRNGKey(args.seed)
    run = functools.partial(sampling.sample_model, model, variables, key, n, T=T,
                            sampler=sampler, labels=labels)
    timer.reset()
    t0 = time.perf_counter()
    images = jax.block_until_ready(run())
    first = time.perf_counter() - t0
    info = timer.snapshot()
    times = timed(run, args.sample_repeats or SAMPLE_REPEATS[args.config])
    chain = statistics.median(times)
    per_sampler[sampler] = {
        "chain_s": r(chain), "sample_step_s": r(chain / T), "s_per_image": r(chain / n),
        "s_per_image_step": r(chain / T / n), "compile_s": info["compile_s"],
        "first_call_s": r(first),
    }
    compile_total += info["compile_s"]
    grids[sampler] = np.asarray(images)
  out["samplers"] = per_sampler
  out["sample_step_s"] = {s: v["sample_step_s"] for s, v in per_sampler.items()}
  out["compile_s"] = round(compile_total, 3)
  first = next(iter(per_sampler.values()))
  out["step_s"] = first["sample_step_s"]
  out["images_per_s"] = r(n / first["chain_s"])
  # One network evaluation per image per reverse step.
  out.update(model_flops(model, spec, n * T / first["chain_s"], "forward"))
  if args.png:
    from vdm_jax import logging_utils
    for sampler, images in grids.items():
      path = Path(args.png)
      path = path.with_name(f"{path.stem}_{sampler}_T{T}{path.suffix or '.png'}")
      logging_utils.save_image_grid(images, path, vocab_size=model.vocab_size)
      out.setdefault("png", []).append(str(path))
  return out


def eval_batch_size(spec, args) -> int:
  return args.eval_batch_size or spec.eval.batch_size


def bench_eval(spec, model, args, mesh, timer) -> dict:
  params, extra = init_params(model, spec, args, mesh)
  variables = {"params": params}
  batch = eval_batch_size(spec, args)
  rng = np.random.default_rng(1)

  def batches(k):
    for _ in range(k):
      b = {"image": random_images(rng, batch, model.image_shape, model.vocab_size),
           "mask": np.ones((batch,), bool)}
      if model.num_classes:
        b["label"] = rng.integers(0, model.num_classes, (batch,)).astype(np.int32)
      yield b

  put = lambda b: parallel.shard_batch(b, mesh)
  key = jax.random.PRNGKey(args.seed)
  timer.reset()
  t0 = time.perf_counter()
  evaluation.evaluate(model, variables, batches(1), key, put_batch=put)
  first = time.perf_counter() - t0
  info = timer.snapshot()
  times = []
  for _ in range(args.eval_repeats):
    t0 = time.perf_counter()
    res = evaluation.evaluate(model, variables, batches(args.eval_batches), key, put_batch=put)
    times.append(time.perf_counter() - t0)
  per_call = statistics.median(times)
  images = batch * args.eval_batches
  return {"param_count": model_lib.param_count(params), **extra, **info,
          "first_call_s": r(first), "eval_batch_size": batch, "eval_batches": args.eval_batches,
          "step_s": r(per_call / args.eval_batches), "images_per_s": r(images / per_call),
          "eval_images_per_s": r(images / per_call), "bpd_of_random_images": r(res["bpd"])}


# ============================================================================ main


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", choices=sorted(CONFIGS), required=True)
  p.add_argument("--what", choices=("train", "sample", "eval"), default="train")
  p.add_argument("--batch_size", type=int, default=None, help="training batch (default: config)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                 help="compute dtype of the network (parameters stay float32)")
  p.add_argument("--remat", type=_parse_bool, default=None,
                 help="rematerialise the network's blocks in the backward pass (default: config)")
  p.add_argument("--scan", type=_parse_bool, default=None,
                 help="vdm_unet: stack the blocks with nn.scan (default: config / True)")
  p.add_argument("--set", action="append", metavar="KEY=VALUE",
                 help="config override, e.g. --set model.vdm_unet.n_layer=8 (repeatable)")
  p.add_argument("--steps", type=_positive_int, default=10,
                 help="timed train steps (median reported)")
  p.add_argument("--warmup", type=int, default=2, help="untimed train steps after the first")
  p.add_argument("--sample_T", type=_positive_int, default=None,
                 help="steps of the timed sampling chain (default: 20; paper: 4)")
  p.add_argument("--sample_batch", type=_positive_int, default=16)
  p.add_argument("--sample_repeats", type=_positive_int, default=None,
                 help="timed chains per sampler after the compiling one (default 3; paper 1)")
  p.add_argument("--samplers", default="ancestral,ddim")
  p.add_argument("--eval_batch_size", type=int, default=None)
  p.add_argument("--eval_batches", type=_positive_int, default=4)
  p.add_argument("--eval_repeats", type=_positive_int, default=3)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--workdir", default=None,
                 help="sample/eval: restore the EMA parameters of this run's latest checkpoint")
  p.add_argument("--png", default=None, help="sample: write the sample grids next to this path")
  p.add_argument("--profile", default=None, help="train: jax.profiler trace of 3 steps here")
  p.add_argument("--flops", action="store_true", help="train: XLA's flop count of the step")
  p.add_argument("--out", default=None, help="also append the JSON line to this file")
  return p


def main(argv=None) -> dict:
  args = make_parser().parse_args(argv)

  timer = CompileTimer()
  spec = build_config(args)
  model = spec.model.build()
  mesh = parallel.make_mesh(jax.devices()[:1])
  net_cfg = dict(spec.model.network_kwargs)
  result = {
      **device_info(), "config": args.config, "what": args.what,
      "batch_size": (args.sample_batch if args.what == "sample" else
                     eval_batch_size(spec, args) if args.what == "eval"
                     else spec.training.batch_size),
      "network": spec.model.network, "dtype": spec.model.dtype,
      "remat": bool(net_cfg.get("remat", False)),
      "scan": bool(net_cfg.get("scan", True)) if spec.model.network == "vdm_unet" else None,
      "image_shape": list(model.image_shape),
  }
  bench = {"train": bench_train, "sample": bench_sample, "eval": bench_eval}[args.what]
  t0 = time.perf_counter()
  watch = CpuWatch()
  result.update(bench(spec, model, args, mesh, timer))
  result["total_s"] = r(time.perf_counter() - t0)
  result["other_processes_cpu_cores"] = watch.other_load()
  result["peak_rss_mib"] = peak_rss_mib()
  line = json.dumps(result)
  print(line, flush=True)
  if args.out:
    with open(args.out, "a") as f:
      f.write(line + "\n")
  return result


if __name__ == "__main__":
  main()
