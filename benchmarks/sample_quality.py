"""Sample quality of a trained run's checkpoint under several samplers, one row per setting.

    python benchmarks/sample_quality.py --workdir=/tmp/qs --num_samples=2000 \\
        --rows=ddim:50,ancestral:100,ode,ancestral:1000 --floor \\
        --reference_workdir=/tmp/qs20 --out=benchmarks/results/sample_quality.jsonl

Each row draws --num_samples samples of the checkpoint's EMA parameters
(`training.sample_eval.SampleEvaluator`: the same key for every row, so every row starts from
the same noise z_1) and prints one JSON object: FD, KID (+- std over subsets), precision,
recall against the test split in the features of the run's config.sample_eval feature network,
the wall time (sampling and features) and the network evaluations per image (T for a chain;
for "ode", the mean over the first 16 samples, counted by the solver). Rows are `sampler:T`
(each sampler with its default spacing and order), `ode` (the config's tolerances) or
`ode:TOL` (rtol = atol = TOL). --floor adds the row of --num_samples training images against the test split (what a
perfect sampler would score at this sample count); --reference_workdir adds a row for another
run (e.g. the same config trained for 20 steps: a bad model) with the first chain row's
sampler (run before the --rows, so that a long last row does not hold it up).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import data, metrics, parallel, sampling
from vdm_jax.training import actions, modes, sample_eval


def _spec(workdir: str, num_samples: int, cache_dir: str | None):
  config = config_lib.from_json((Path(workdir) / "config.json").read_text())
  spec = config_lib.resolve(config)
  se = dataclasses.replace(spec.sample_eval, num_samples=num_samples,
                           cache_dir=cache_dir or spec.sample_eval.cache_dir)
  return dataclasses.replace(spec, sample_eval=se)


def _row_sampling(spec, row: str) -> config_lib.SamplingSpec:
  """`sampler:T` (e.g. ddim:50), `ode` (the config's tolerances) or `ode:TOL` (rtol = atol)."""
  name, _, value = row.partition(":")
  base = dataclasses.replace(spec.sample_eval.sampling(), sampler=name, eta=None, spacing=None,
                             order=None)
  if name == "ode":
    return dataclasses.replace(base, rtol=float(value), atol=float(value)) if value else base
  if not value:
    raise SystemExit(f"--rows: {row!r} must be sampler:T (e.g. ddim:50), ode or ode:TOL")
  return dataclasses.replace(base, T=int(value))


def _ode_evals(model, params, key, how) -> float:
  """Mean network evaluations per image of the adaptive ODE on 16 images."""
  _, info = sampling.sample_model(model, {"params": params}, key, 16, sampler="ode",
                                  rtol=how.rtol, atol=how.atol, return_info=True)
  return float(np.mean(np.asarray(info.num_evals)))


def _print(row: dict, out: str | None, rows: list) -> None:
  rows.append(row)
  line = json.dumps(row)
  print(line, flush=True)
  if out:
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    with open(out, "a") as f:
      f.write(line + "\n")


def _metrics_row(evaluator, result: dict) -> dict:
  r = {k[len(sample_eval.PREFIX):]: v for k, v in result.items()}
  keep = ("fd", "kid", "kid_std", "precision", "recall", "accuracy", "num_samples",
          "sampling_seconds", "seconds", "images_per_s", "sampler", "T")
  return {k: r[k] for k in keep if k in r}


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a training run's workdir")
  p.add_argument("--rows", default="ddim:50,ancestral:100,ode,ancestral:1000")
  p.add_argument("--num_samples", type=int, default=2000)
  p.add_argument("--floor", action="store_true", help="add the training-images row")
  p.add_argument("--reference_workdir", default=None, help="add a row for this run too")
  p.add_argument("--cache_dir", default=None)
  p.add_argument("--out", default=None, help="also append each row to this JSONL file")
  return p


def main(argv=None) -> list[dict]:
  """Runs the rows; returns them (the printed JSON objects, the first one the setup's)."""
  args = make_parser().parse_args(argv)
  printed: list[dict] = []
  mesh = parallel.make_mesh()
  spec = _spec(args.workdir, args.num_samples, args.cache_dir)
  start = time.perf_counter()
  evaluator = sample_eval.SampleEvaluator(spec, spec.model.build())
  common = {"workdir": args.workdir, "feature_network": evaluator.net.name,
            "devices": mesh.devices.size, "device": jax.devices()[0].device_kind}
  _print({"row": "setup", "reference_s": time.perf_counter() - start, **common}, None, printed)
  model, params, step, _ = modes.checkpoint_params(spec, args.workdir, None, None, mesh)
  key = actions.sample_eval_key(spec.training.seed)

  if args.floor:
    start = time.perf_counter()
    train = data.load_arrays(spec.data.name, "train", spec.data.data_dir)[0]
    images = train[np.random.default_rng(0).choice(len(train), args.num_samples, replace=False)]
    feats = np.asarray(evaluator.net.feature_fn(images))
    _print({"row": "floor: training images", "fd": metrics.frechet_distance(
        evaluator.reference, metrics.feature_stats(feats)),
        **evaluator.compare_features(feats[:spec.sample_eval.max_features]),
        "num_samples": len(images), "seconds": time.perf_counter() - start, **common},
        args.out, printed)

  rows = [r for r in args.rows.split(",") if r]
  if args.reference_workdir:
    ref_spec = _spec(args.reference_workdir, args.num_samples, args.cache_dir)
    ref_model, ref_params, ref_step, _ = modes.checkpoint_params(
        ref_spec, args.reference_workdir, None, None, mesh)
    chain = next((r for r in rows if not r.startswith("ode")), "ddim:50")
    how = _row_sampling(spec, chain)
    result = evaluator(ref_model, ref_params, mesh, key, sampling=how)
    _print({"row": f"reference run, {chain}", "step": ref_step, "nfe": how.T,
            **_metrics_row(evaluator, result), **common,
            "workdir": args.reference_workdir}, args.out, printed)

  for row in rows:
    how = _row_sampling(spec, row)
    result = evaluator(model, params, mesh, key, sampling=how)
    extra = {"nfe": _ode_evals(model, params, key, how) if how.sampler == "ode" else how.T}
    _print({"row": row, "step": step, **_metrics_row(evaluator, result), **extra, **common},
           args.out, printed)

  return printed


if __name__ == "__main__":
  main()
