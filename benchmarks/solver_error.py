"""How close each solver's samples come to the probability-flow ODE's, per number of evaluations.

    python benchmarks/solver_error.py --workdir=/tmp/qs --num_images=200 \\
        --out=benchmarks/results/solver_error.jsonl

From one z_1 ~ N(0, I) [num_images, ...] (seed --seed), every solver in --solvers, with every
spacing in --spacings and every evaluation count in --evals, maps z_1 to z_0; its x_0 = z_0 /
alpha_0 (the decoder mean, before rounding to pixels) is compared with x_0* of the adaptive
ODE from the same z_1 at rtol = atol = --ref_tol. The reference itself is checked against
--check_tol on the first --check_images images. Errors are mean |x_0 - x_0*| in pixel units
(255 / (high - low) per unit of x for 8-bit data on [low, high]). Each row is one JSON object
(printed, and appended to --out); `seconds` is the wall time of its call, compilation
included.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from vdm_jax import config as config_lib
from vdm_jax import likelihood, parallel, sampling
from vdm_jax.training import modes


def make_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a training run's workdir")
  p.add_argument("--num_images", type=int, default=200)
  p.add_argument("--solvers", default="ddim,dpmpp_2m,dpmpp_3m,unipc")
  p.add_argument("--spacings", default=",".join(sampling.SPACINGS))
  p.add_argument("--evals", default="5,10,20,50")
  p.add_argument("--ref_tol", type=float, default=1e-6)
  p.add_argument("--check_tol", type=float, default=1e-7)
  p.add_argument("--check_images", type=int, default=8)
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--out", default=None, help="also append each row to this JSONL file")
  return p


def main(argv=None) -> list[dict]:
  args = make_parser().parse_args(argv)
  spec = config_lib.resolve(config_lib.from_json(
      (Path(args.workdir) / "config.json").read_text()))
  mesh = parallel.make_mesh(jax.devices()[:1])
  model, params, step, _ = modes.checkpoint_params(spec, args.workdir, None, None, mesh)
  variables = {"params": params}
  data = model.data
  if not isinstance(data, likelihood.Discrete):
    raise SystemExit("solver_error.py measures pixel errors: the run must model discrete data.")
  pixels_per_unit = (data.vocab_size - 1) / (data.high - data.low)

  def eps_fn(z, gamma):
    return model.apply(variables, z, gamma, method=model.eps)

  def gamma_fn(t):
    return model.apply(variables, t, method=model.gamma)

  shape = (args.num_images, *model.image_shape)
  z_1 = jax.random.normal(jax.random.PRNGKey(args.seed), shape, jnp.float32)
  mean = likelihood.Continuous()   # decodes z_0 to its mean z_0 / alpha_0: x_0 before rounding
  rows: list[dict] = []

  def emit(row):
    row = {**row, "step": step, "num_images": args.num_images, "device": jax.devices()[0].device_kind}
    rows.append(row)
    print(json.dumps(row), flush=True)
    if args.out:
      Path(args.out).parent.mkdir(parents=True, exist_ok=True)
      with open(args.out, "a") as f:
        f.write(json.dumps(row) + "\n")

  def ode(z, tol):
    start = time.perf_counter()
    x, info = sampling.sample(eps_fn, gamma_fn, jax.random.PRNGKey(0), z.shape, data=mean,
                              sampler="ode", rtol=tol, atol=tol, z_1=z, return_info=True)
    return np.asarray(x), float(np.mean(np.asarray(info.num_evals))), time.perf_counter() - start

  reference, ref_evals, ref_s = ode(z_1, args.ref_tol)
  check, check_evals, _ = ode(z_1[:args.check_images], args.check_tol)
  emit({"row": "reference", "tol": args.ref_tol, "nfe": ref_evals, "seconds": ref_s,
        "check_tol": args.check_tol, "check_nfe": check_evals,
        "check_error_px": float(np.mean(np.abs(reference[:args.check_images] - check)))
        * pixels_per_unit})

  for solver in args.solvers.split(","):
    for spacing in args.spacings.split(","):
      for evals in (int(e) for e in args.evals.split(",")):
        start = time.perf_counter()
        x = np.asarray(sampling.sample(eps_fn, gamma_fn, jax.random.PRNGKey(1), shape,
                                       data=mean, sampler=solver, T=evals, spacing=spacing,
                                       z_1=z_1))
        emit({"row": f"{solver}/{spacing}/{evals}", "solver": solver, "spacing": spacing,
              "nfe": evals, "error_px": float(np.mean(np.abs(x - reference))) * pixels_per_unit,
              "seconds": time.perf_counter() - start})
  return rows


if __name__ == "__main__":
  main()
