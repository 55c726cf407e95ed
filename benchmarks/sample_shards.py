"""Sampling many images in shards against one plain batch: images/s per device and peak memory.

    python benchmarks/sample_shards.py --workdir=/tmp/vdm_quickstart --num_samples=10000 \
        --per_device_batch=64 --T=128

Restores the EMA parameters of the run's latest checkpoint (its own `config.json`) and prints
ONE JSON object with:
  unsharded  `sampling.sample_model` for one batch of per_device_batch images on one device
             (plain `jax.jit`, no mesh), `--repeats` timed calls after a compiling one
             (median): images/s of that device.
  sharded    `training.sample_shards.write_shards` of `--num_samples` images into a fresh folder
             (chunks of per_device_batch x devices images over every device of every process,
             files written), after the chunk function was compiled: seconds, images/s and
             images/s per device.
  ratio      sharded over unsharded images/s per device (1.0 = no overhead; run it on a quiet
             machine: the two are timed one after the other).
  peak_rss_mib  this process's peak resident memory (ru_maxrss): bounded by the chunk, so the
             same for 1,000 as for 10,000 samples.
Several processes: run it on each with the same arguments plus --coordinator_address,
--num_processes and --process_id (as `experiments/train.py`); each process prints its own object.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
  sys.path.insert(0, str(REPO))

import jax  # noqa: E402

from vdm_jax import config as config_lib, parallel, sampling, training  # noqa: E402
from vdm_jax.training import actions, sample_shards  # noqa: E402


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--workdir", required=True, help="a training run's folder (config.json + "
                 "checkpoints)")
  p.add_argument("--num_samples", type=int, default=10_000)
  p.add_argument("--per_device_batch", type=int, default=64)
  p.add_argument("--T", type=int, default=None, help="chain steps; default the run's sampling.T")
  p.add_argument("--repeats", type=int, default=3, help="timed unsharded calls")
  p.add_argument("--out_dir", default=None, help="where the shards go (default a temp folder)")
  p.add_argument("--coordinator_address", default=None)
  p.add_argument("--num_processes", type=int, default=None)
  p.add_argument("--process_id", type=int, default=None)
  args = p.parse_args(argv)

  if args.num_processes:
    parallel.initialize_distributed(True, coordinator_address=args.coordinator_address,
                                    num_processes=args.num_processes, process_id=args.process_id)
  config = training.workdir.read_config(args.workdir)
  mesh = parallel.make_mesh()
  spec = config_lib.resolve(config, num_devices=mesh.devices.size,
                            num_processes=jax.process_count())
  sampling_spec = spec.sampling if args.T is None else dataclasses.replace(spec.sampling, T=args.T)
  model, state, step = training.restore_state(spec, args.workdir, mesh=mesh)
  variables = {"params": state.ema_params}
  key = actions.sample_key(spec.training.seed)
  devices = mesh.devices.size
  chunk = args.per_device_batch * devices

  # One device's batch, drawn as `sampling.sample_model` alone (no mesh, no chunks, no files).
  def plain(k):
    return sampling.sample_model(model, variables, k, args.per_device_batch,
                                 **sampling_spec.sampler_kwargs(),
                                 labels=actions.sample_labels(model, args.per_device_batch))
  plain = jax.jit(plain)
  jax.block_until_ready(plain(key))
  times = []
  for r in range(args.repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(plain(jax.random.fold_in(key, r)))
    times.append(time.perf_counter() - t0)
  unsharded = args.per_device_batch / statistics.median(times)

  out_dir = Path(args.out_dir or tempfile.mkdtemp(prefix="vdm_shards_"))
  # Compile the chunk function first (one chunk into a scratch folder), so both rates exclude it.
  sample_shards.write_shards(model, variables, sampling_spec, key, mesh, out_dir / "warmup",
                             chunk, per_device_batch=args.per_device_batch)
  result = sample_shards.write_shards(model, variables, sampling_spec, key, mesh,
                                      out_dir / "samples", args.num_samples,
                                      per_device_batch=args.per_device_batch)
  sharded = result["images_per_s"]
  record = {
      "workdir": str(args.workdir), "step": int(step), "T": sampling_spec.T,
      "sampler": sampling_spec.sampler, "num_samples": args.num_samples,
      "per_device_batch": args.per_device_batch, "devices": devices,
      "processes": jax.process_count(), "process": jax.process_index(),
      "unsharded": {"images_per_s_per_device": unsharded, "call_s": times},
      "sharded": {"seconds": result["seconds"], "chunks": result["chunks"],
                  "images_per_s": sharded, "images_per_s_per_device": sharded / devices},
      "ratio": sharded / devices / unsharded,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
      "jax": jax.__version__, "device_kind": jax.devices()[0].device_kind,
      "out_dir": str(out_dir / "samples"),
  }
  print(json.dumps(record), flush=True)
  return record


if __name__ == "__main__":
  main()
