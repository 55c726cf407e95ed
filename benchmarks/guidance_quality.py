"""Classifier guidance against classifier-free guidance: the noisy classifier's accuracy by t,
and the feature network's accuracy and FD of guided samples, one row per scale.

    python benchmarks/guidance_quality.py --workdir=/tmp/qs --cond_workdir=/tmp/qs_cond \\
        --classifier_workdir=/tmp/clf --scales=0,1,2,4,8 --sampler=dpmpp_2m --T=20 \\
        --num_samples=2000 --grid_dir=/tmp/guidance_grids --out=guidance.jsonl

Rows (one JSON object each, also appended to --out):
- `classifier`: the noisy classifier's (EMA) accuracy and cross-entropy (nats) on every test
  image at each exact t of --times (one noise draw per image), with the binomial standard error.
- `cg`: the unconditional run --workdir guided by the classifier with scale s
  (eps - s sigma_t grad log p(y | z_t)); s = 0 is the unguided model, whose samples are then
  scored against the labels 0, 1, 2, ... they were not drawn for (chance: 1/classes).
- `cfg`: the class-conditional run --cond_workdir with guidance weight w
  ((1 + w) eps(z, y) - w eps(z)); w = 0 is the plain conditional model.
Every sample row uses one sampler, T and sample count, and the same key (so the same z_1 and
labels 0, 1, 2, ... cyclically): FD, KID, precision/recall against the test split in the run's
sample_eval feature network, that network's accuracy on the asked classes (+- binomial s.e.),
and the sampling wall time. --grid_dir: the first chunk of each row's samples as a PNG grid,
one class per column.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import data, parallel
from vdm_jax.training import actions, guidance, modes, sample_eval, sample_shards
from vdm_jax.training import workdir as workdir_lib

import sample_quality   # noqa: E402  (benchmarks/ is the script's directory)


def _print(row: dict, out: str | None) -> dict:
  line = json.dumps(row)
  print(line, flush=True)
  if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
      f.write(line + "\n")
  return row


def _binomial_se(p: float, n: int) -> float:
  return math.sqrt(max(p * (1.0 - p), 0.0) / n)


def classifier_rows(classifier_workdir: str, times, mesh, batch: int = 500, seed: int = 0):
  """[{t, accuracy, accuracy_se, nll, num_images}] of the classifier's EMA parameters on the
  whole test split at each t."""
  model, params, step = guidance._classifier_run(str(classifier_workdir), mesh)
  spec = config_lib.resolve(workdir_lib.read_config(classifier_workdir))
  images, labels = data.load_arrays(spec.data.name, "test", spec.data.data_dir)
  t_values = jnp.asarray(times, jnp.float32)

  @jax.jit
  def at(p, x, y, key):
    t = jnp.broadcast_to(t_values[:, None], (len(times), x.shape[0]))
    return model.apply({"params": p}, x, y, t, key, method=model.at_times)

  key = jax.random.PRNGKey(seed)
  nll, correct = [], []
  for i in range(0, len(images) - len(images) % batch, batch):
    a, b = at(params, images[i:i + batch], labels[i:i + batch], jax.random.fold_in(key, i))
    nll.append(np.asarray(a))
    correct.append(np.asarray(b))
  nll, correct = np.concatenate(nll, axis=1), np.concatenate(correct, axis=1)
  n = correct.shape[1]
  return step, [{"t": float(t), "accuracy": float(c.mean()),
                 "accuracy_se": _binomial_se(float(c.mean()), n), "nll": float(l.mean()),
                 "num_images": n} for t, c, l in zip(times, correct, nll)]


def sample_row(evaluator, spec, model, params, mesh, how, grid: Path | None) -> dict:
  """The evaluator's row for one guided setting (and its grid: the same first chunk)."""
  key = actions.sample_eval_key(spec.training.seed)
  result = evaluator(model, params, mesh, key, sampling=how)
  row = sample_quality._metrics_row(evaluator, result)
  if "accuracy" in row:
    row["accuracy_se"] = _binomial_se(row["accuracy"], row["num_samples"])
  if grid is not None:
    guided, guided_params = guidance.guide(how, model, params, mesh)
    first = next(sample_shards.generate(guided, {"params": guided_params}, how, key, mesh,
                                        how.per_device_batch * mesh.devices.size,
                                        per_device_batch=how.per_device_batch))
    grid.parent.mkdir(parents=True, exist_ok=True)
    sample_shards._save_grid(first.images, grid.with_suffix(""), guided)
    row["grid"] = str(grid)
  return row


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="an unconditional diffusion run")
  p.add_argument("--cond_workdir", default=None, help="a class-conditional run (cfg rows)")
  p.add_argument("--classifier_workdir", required=True, help="a noisy-classifier run")
  p.add_argument("--scales", default="0,1,2,4,8")
  p.add_argument("--times", default="0,0.5,0.9")
  p.add_argument("--sampler", default="dpmpp_2m")
  p.add_argument("--T", type=int, default=20)
  p.add_argument("--num_samples", type=int, default=2000)
  p.add_argument("--cache_dir", default=None)
  p.add_argument("--grid_dir", default=None, help="write each row's grid here")
  p.add_argument("--out", default=None, help="also append each row to this JSONL file")
  return p


def main(argv=None) -> list[dict]:
  args = make_parser().parse_args(argv)
  mesh = parallel.make_mesh()
  scales = [float(s) for s in args.scales.split(",") if s]
  common = {"sampler": args.sampler, "T": args.T, "devices": mesh.devices.size,
            "device": jax.devices()[0].device_kind}
  printed = []
  step, rows = classifier_rows(args.classifier_workdir, [float(t) for t in
                                                         args.times.split(",") if t], mesh)
  for r in rows:
    printed.append(_print({"row": "classifier", "step": step, **r,
                           "workdir": args.classifier_workdir}, args.out))

  runs = [("cg", args.workdir)] + ([("cfg", args.cond_workdir)] if args.cond_workdir else [])
  for kind, workdir in runs:
    spec = sample_quality._spec(workdir, args.num_samples, args.cache_dir)
    evaluator = sample_eval.SampleEvaluator(spec, spec.model.build())
    model, params, run_step, _ = modes.checkpoint_params(spec, workdir, None, None, mesh)
    base = dataclasses.replace(spec.sample_eval.sampling(), sampler=args.sampler, T=args.T,
                               eta=None, spacing=None, order=None, guidance_weight=0.0)
    for s in scales:
      how = (dataclasses.replace(base, classifier_workdir=args.classifier_workdir,
                                 classifier_scale=s) if kind == "cg"
             else dataclasses.replace(base, guidance_weight=s))
      grid = Path(args.grid_dir) / f"{kind}_{s:g}.png" if args.grid_dir else None
      row = sample_row(evaluator, spec, model, params, mesh, how, grid)
      printed.append(_print({"row": kind, "scale": s, "step": run_step, **row, **common,
                             "workdir": workdir}, args.out))
  return printed


if __name__ == "__main__":
  main()
