"""The ODE bound against the ELBO, image by image, for a trained run: resumable, in JSON lines.

    python benchmarks/ode_bound.py --workdir=/tmp/vdm_quickstart --num_images=1000 \
        --out=/tmp/ode_bound.jsonl [--max_seconds=3600]

Restores the EMA parameters of the run's latest checkpoint (its own `config.json`) and takes the
first --num_images test images in a random order (fixed by --seed), --batch_size at a time on
one device (the default one). For each batch it appends one JSON line to --out with, per image:
the bound through the probability-flow ODE (`evaluation.ode_per_example`, one z_0 ~ q(z_0 | x)
and one Hutchinson probe, rtol/atol as given), the negative ELBO (continuous time,
--elbo_time_samples draws averaged), both in bits/dim, and the ODE solve's network evaluations.

Why a separate script and not `--mode=eval --config.eval.method=ode`: at the tolerances where the
ODE bound is accurate (about 1e-5, see the README) one image costs thousands of network
evaluations, hours on a CPU for 1,000 images. This script keeps every finished batch, so a run
that is stopped (--max_seconds, a preempted machine) resumes where it stopped with the same
numbers (batch b always uses `fold_in(key(seed), b)`; a last line cut short by a kill is
dropped and its batch computed again), and because the order is random, the images done so far
are a simple random sample of the --num_images. Standard errors are over
images (std / sqrt(n)), as in `--mode=eval`: the test images as a sample of the data's
distribution, which also covers the Monte-Carlo noise of the draws.

--shard=K/N computes only the batches b with b % N == K, so that N processes (one per core or
accelerator) share the work; they may append to the same --out (each line is written under a
lock). On a CPU, XLA gains little from a second thread at these sizes, so one process per core,
each with one thread, is the faster way to use a multi-core machine:

    export XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
    for k in 0 1; do taskset -c $k python benchmarks/ode_bound.py ... --shard=$k/2 & done; wait

Prints ONE JSON object at the end (also with --summary_only, from --out alone): the checkpoint's
step, images done (every batch in --out, whichever process computed it), ODE and ELBO bpd on
those images (mean +- s.e.), their paired difference, and network evaluations per image.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import functools
import json
import math
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vdm_jax import (config as config_lib, data, evaluation, likelihood, parallel,  # noqa: E402
                     training)

SETTINGS = ("workdir", "num_images", "batch_size", "seed", "rtol", "atol", "trace",
            "elbo_time_samples")


def read_done(path: Path, settings: dict, *, resume: bool = True) -> dict[int, dict]:
  """The batches already in `path` ({batch number: record}); an error if they were computed
  with other settings (a different run would mix two experiments in one file).

  A last line cut short (the process killed while writing it) is not a batch done; with
  `resume` it is also cut from the file, so that its batch is computed again and appended
  after the complete lines. Any other line that is not a record is an error."""
  done = {}
  if not path.exists():
    return done
  with _locked(path, "r+" if resume else "r") as f:
    text = f.read()
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
      if resume:
        print(f"{path}: dropping its last line, cut short ({len(lines[-1])} characters); that "
              "batch is computed again.", file=sys.stderr)
        f.truncate(len(text.encode()) - len(lines[-1].encode()))
      lines = lines[:-1]
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
      theirs = {k: record["settings"][k] for k in SETTINGS}
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise SystemExit(f"{path}, line {number}: not a record of this script ({e}). Pass "
                       "another --out, or remove that line to compute its batch again.") from None
    if theirs != settings:
      raise SystemExit(f"{path} holds batches computed with {theirs}, not {settings}: pass "
                       "another --out, or the same settings to resume.")
    done[record["batch"]] = record
  return done


@contextlib.contextmanager
def _locked(path: Path, mode: str):
  """`path` opened with an exclusive lock, held until the block ends: the processes of several
  shards read, cut and append --out one at a time, so no line is read half written."""
  with path.open(mode) as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    yield f                                      # closing the file releases the lock


def append_record(path: Path, record: dict) -> None:
  with _locked(path, "a") as f:
    f.write(json.dumps(record) + "\n")


def parse_shard(text: str) -> tuple[int, int]:
  """'K/N' -> (K, N) with 0 <= K < N."""
  try:
    k, n = (int(part) for part in text.split("/"))
  except ValueError:
    k = n = -1
  if not 0 <= k < n:
    raise SystemExit(f"--shard must be K/N with 0 <= K < N (this process computes the batches "
                     f"b with b % N == K), got {text!r}.")
  return k, n


def check_step(done: dict[int, dict], step: int, path: Path) -> None:
  """The batches already done must come from the checkpoint restored now: if the run trained on
  since, its latest checkpoint is another model, and the file would mix the two."""
  theirs = sorted({int(r["step"]) for r in done.values()})
  if theirs and theirs != [step]:
    raise SystemExit(f"{path} holds batches of the checkpoint at step "
                     f"{', '.join(map(str, theirs))}, but the run's latest checkpoint is step "
                     f"{step}: pass another --out to bound step {step}.")


def mean_se(values: np.ndarray) -> tuple[float, float]:
  """Mean and its standard error over images (nan for fewer than two)."""
  n = len(values)
  se = float(np.std(values, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  return float(np.mean(values)), se


def summarize(done: dict[int, dict], settings: dict, seconds: float | None = None) -> dict:
  records = [done[b] for b in sorted(done)]
  if not records:
    return {**settings, "images_done": 0, "batches_done": 0}
  cat = lambda k: np.concatenate([np.asarray(r[k], np.float64) for r in records])  # noqa: E731
  ode_bpd, elbo_bpd, evals = cat("ode_bpd"), cat("elbo_bpd"), cat("num_evals")
  n = len(ode_bpd)
  ode, ode_se = mean_se(ode_bpd)
  elbo, elbo_se = mean_se(elbo_bpd)
  diff, diff_se = mean_se(ode_bpd - elbo_bpd)
  solve_s = sum(r["seconds"] for r in records)
  return {
      **settings, "step": records[0]["step"], "images_done": int(n),
      "batches_done": len(records),
      "ode_bpd": ode, "ode_bpd_se": ode_se, "elbo_bpd": elbo, "elbo_bpd_se": elbo_se,
      "ode_minus_elbo_bpd": diff, "ode_minus_elbo_bpd_se": diff_se,
      "evals_per_image_mean": float(np.mean(evals)), "evals_per_image_min": int(np.min(evals)),
      "evals_per_image_max": int(np.max(evals)),
      "seconds_per_image": solve_s / n,
      **({} if seconds is None else {"seconds_this_call": seconds}),
  }


@functools.partial(jax.jit, static_argnames=("model", "trace", "rtol", "atol",
                                             "elbo_time_samples"))
def bounds(variables, images, labels, key, *, model, trace, rtol, atol, elbo_time_samples):
  """Per image: the ODE bound and the negative ELBO (nats), and the solve's network evaluations.
  Module level, so that calls in one process share its compilation."""
  key_ode, key_elbo = jax.random.split(key)
  ode_terms = evaluation.ode_per_example(model, variables, images, labels, key_ode, trace=trace,
                                         rtol=rtol, atol=atol)
  elbo = evaluation.per_example_loss(model, variables, images, labels, key_elbo, T=0,
                                     num_time_samples=elbo_time_samples)
  ode_nats = ode_terms["z0_nll"] + ode_terms["dequant"] + ode_terms["recon"]
  return ode_nats, elbo.recon + elbo.prior + elbo.diffusion, ode_terms["num_evals"]


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a training run's folder (config.json + "
                 "checkpoints)")
  p.add_argument("--out", required=True, help="JSON lines, one per finished batch (resumed)")
  p.add_argument("--num_images", type=int, default=1000, help="the first N test images")
  p.add_argument("--batch_size", type=int, default=8)
  p.add_argument("--seed", type=int, default=0, help="image order, z_0 draws and probes")
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--trace", default="hutchinson", choices=("hutchinson", "exact"))
  p.add_argument("--elbo_time_samples", type=int, default=16)
  p.add_argument("--shard", default="0/1", help="K/N: only the batches b with b %% N == K")
  p.add_argument("--max_seconds", type=float, default=None, help="start no batch after this")
  p.add_argument("--summary_only", action="store_true", help="summarize --out; compute nothing")
  return p


def main(argv=None) -> dict:
  args = make_parser().parse_args(argv)
  if not 1 <= args.batch_size <= args.num_images <= 10_000:
    raise SystemExit("Need 1 <= --batch_size <= --num_images <= 10000 (the test split).")
  shard, num_shards = parse_shard(args.shard)
  settings = {k: getattr(args, k) for k in SETTINGS}
  settings["workdir"] = str(Path(args.workdir).resolve())
  out = Path(args.out)
  # --summary_only never writes, so it can summarize a file that a running job appends to.
  done = read_done(out, settings, resume=not args.summary_only)
  if args.summary_only:
    if not done:
      raise SystemExit(f"{out} has no finished batch to summarize.")
    record = summarize(done, settings)
    print(json.dumps(record), flush=True)
    return record

  start = time.perf_counter()
  spec = config_lib.resolve(training.workdir.read_config(args.workdir), num_devices=1,
                            num_processes=1)
  model, state, step = training.restore_state(spec, args.workdir, mesh=parallel.make_mesh())
  check_step(done, step, out)
  variables = {"params": jax.device_get(state.ema_params)}
  images, labels = data.load_arrays(spec.data.name, "test", spec.data.data_dir)
  num_dims = math.prod(images.shape[1:])
  order = np.random.default_rng(args.seed).permutation(args.num_images)
  key = jax.random.key(args.seed)

  num_batches = math.ceil(args.num_images / args.batch_size)
  out.parent.mkdir(parents=True, exist_ok=True)
  for b in range(shard, num_batches, num_shards):
    if b in done:
      continue
    if args.max_seconds is not None and time.perf_counter() - start > args.max_seconds:
      break
    idx = order[b * args.batch_size:(b + 1) * args.batch_size]
    t0 = time.perf_counter()
    ode_nats, elbo_nats, evals = jax.device_get(bounds(
        variables, jnp.asarray(images[idx]), jnp.asarray(labels[idx]), jax.random.fold_in(key, b),
        model=model, trace=args.trace, rtol=args.rtol, atol=args.atol,
        elbo_time_samples=args.elbo_time_samples))
    record = {"batch": b, "step": int(step), "indices": idx.tolist(),
              "ode_bpd": likelihood.nats_to_bpd(np.asarray(ode_nats), num_dims).tolist(),
              "elbo_bpd": likelihood.nats_to_bpd(np.asarray(elbo_nats), num_dims).tolist(),
              "num_evals": np.asarray(evals).tolist(),
              # The first batch of each call also includes compiling.
              "seconds": time.perf_counter() - t0, "settings": settings}
    append_record(out, record)
    done[b] = record
  # Every batch in the file, also those of the other shards' processes.
  record = summarize(read_done(out, settings, resume=False), settings,
                     time.perf_counter() - start)
  print(json.dumps(record), flush=True)
  return record


if __name__ == "__main__":
  main()
