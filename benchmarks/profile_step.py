"""Where the time of a compiled step goes: per-op profile and timings of the step's parts.

    python benchmarks/profile_step.py --config=small --part=train
    python benchmarks/profile_step.py --config=paper --part=net_grad --top=25

Parts (each jitted on its own, one device):
  forward   the score network's forward pass (eps_hat), train=False.
  net_grad  gradient of mean(eps_hat^2) with respect to the network's parameters (train=True).
  loss_grad value and gradient of the training objective (`training.loss_fn`).
  train     the real train step (`training.make_train_step`, one step per call).

Prints ONE JSON object: compile seconds, median seconds per call, the HLO size of the compiled
program, and the top ops of a `jax.profiler` trace of `--trace_calls` calls aggregated by HLO
op name (on CPU these are the XLA:CPU thunks: convolutions, dots, fusions, while loops...),
plus totals per op kind.  Takes the same config flags as bench.py (same configs, resolved by
`vdm_jax.config.resolve` for one device).
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from vdm_jax import model as model_lib  # noqa: E402
from vdm_jax import parallel, training  # noqa: E402


def make_part(part, spec, model, mesh, copts=None):
  """(callable taking no arguments and returning arrays, compiled object for HLO stats).
  spec: the `config.RunSpec` (bench.build_config); model: its `spec.model.build()`."""
  batch = spec.training.batch_size
  rng = np.random.default_rng(0)
  images = jnp.asarray(bench.random_images(rng, batch, model.image_shape, model.vocab_size))
  key = jax.random.PRNGKey(0)
  params = jax.jit(lambda k: model_lib.init_variables(model, k)["params"])(key)
  net = model.network
  z = jnp.asarray(rng.standard_normal((batch, *model.image_shape)), jnp.float32)
  cond = jnp.asarray(rng.uniform(size=(batch,)), jnp.float32)

  if part == "forward":
    fn = jax.jit(lambda p, z, c: net.apply({"params": p["network"]}, z, c))
    args = (params, z, cond)
  elif part == "net_grad":
    def f(p, z, c, k):
      out = net.apply({"params": p["network"]}, z, c, train=True, rngs={"dropout": k})
      return jnp.mean(out ** 2)
    fn = jax.jit(jax.grad(f))
    args = (params, z, cond, key)
  elif part == "loss_grad":
    g = jax.value_and_grad(functools.partial(training.loss_fn, model, train=True), has_aux=True)
    fn = jax.jit(g)
    args = (params, {"image": images}, key)
  elif part == "train":
    optimizer = training.make_optimizer(spec.optimizer, spec.training.num_steps)
    state = training.create_state(model, optimizer, 0, mesh)
    step = training.make_train_step(model, optimizer, mesh, ema_rate=0.9999)
    batches = parallel.shard_batch({"image": np.asarray(images)[None]}, mesh, batch_dim=1)
    t0 = time.perf_counter()
    compiled = step.lower(state, batches).compile(compiler_options=copts)
    compile_s = time.perf_counter() - t0
    holder = {"s": state}

    def call():
      holder["s"], m = compiled(holder["s"], batches)
      return holder["s"], m
    return call, compiled, compile_s
  else:
    raise SystemExit(f"unknown part {part}")
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile(compiler_options=copts)
  compile_s = time.perf_counter() - t0
  return (lambda: compiled(*args)), compiled, compile_s


def hlo_stats(compiled) -> dict:
  text = compiled.as_text()
  ops = collections.Counter()
  for line in text.splitlines():
    m = re.match(r"\s*(?:ROOT )?%?[\w.\-]+ = .*?\s([a-z][\w\-]*)\(", line)
    if m:
      ops[m.group(1)] += 1
  return {"hlo_chars": len(text), "hlo_instructions": sum(ops.values()),
          "convolutions": ops.get("convolution", 0), "custom_calls": ops.get("custom-call", 0),
          "whiles": ops.get("while", 0), "fusions": ops.get("fusion", 0)}


def describe_ops(text: str, names) -> dict:
  """name -> 'shape = op(...) [fused convolution/dot shapes] op_name' from the HLO text."""
  lines = text.splitlines()
  out = {}
  for name in names:
    for i, line in enumerate(lines):
      m = re.match(rf"\s*(?:ROOT )?%{re.escape(name)} = (\S+) (\S+?)\(", line)
      if not m:
        continue
      meta = re.search(r'op_name="([^"]+)"', line)
      d = f"{m.group(1)} {m.group(2)}"
      calls = re.search(r"calls=%([\w.\-]+)", line)
      if calls:   # what the fusion computes: its convolutions / dots
        body = re.search(rf"%{re.escape(calls.group(1))} [^\n]*\{{\n(.*?)\n\}}", text, re.S)
        if body:
          inner = re.findall(r"= (\S+) (convolution|dot|reduce)\([^\n]*?(dim_labels=[^,\s]+|"
                             r"lhs_contracting_dims=\{[^}]*\})", body.group(1))
          if inner:
            d += " [" + "; ".join(" ".join(t) for t in inner) + "]"
      if meta:
        d += " " + meta.group(1).split("/", 1)[-1][-120:]
      out[name] = d
      break
  return out


def profile(call, n) -> tuple[dict, dict, float]:
  with tempfile.TemporaryDirectory() as d:
    jax.profiler.start_trace(d)
    t0 = time.perf_counter()
    for _ in range(n):
      jax.block_until_ready(call())
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    files = list(Path(d).rglob("*.xplane.pb"))
    data = jax.profiler.ProfileData.from_file(str(files[0]))
  by_name = collections.defaultdict(float)
  count = collections.Counter()
  for plane in data.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    for line in plane.lines:
      for ev in line.events:
        by_name[ev.name] += ev.duration_ns * 1e-9 / n
        count[ev.name] += 1
  return by_name, count, wall / n


def kind_of(name: str) -> str:
  return re.sub(r"[.\d]+$", "", name.split(":")[0])


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--config", choices=sorted(bench.CONFIGS), required=True)
  p.add_argument("--part", default="train", choices=("forward", "net_grad", "loss_grad", "train"))
  p.add_argument("--batch_size", type=int, default=None)
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=None)
  p.add_argument("--remat", type=bench._parse_bool, default=None)
  p.add_argument("--scan", type=bench._parse_bool, default=None)
  p.add_argument("--set", action="append", metavar="KEY=VALUE")
  p.add_argument("--steps", type=int, default=5)
  p.add_argument("--trace_calls", type=int, default=2)
  p.add_argument("--top", type=int, default=20)
  p.add_argument("--dump_hlo", default=None, help="write the optimized HLO text here")
  p.add_argument("--xla", action="append", metavar="OPTION=VALUE",
                 help="XLA compiler option for this compile only, e.g. "
                 "--xla xla_backend_optimization_level=1 (repeatable)")
  args = p.parse_args(argv)
  spec = bench.build_config(args)
  model = spec.model.build()
  mesh = parallel.make_mesh(jax.devices()[:1])
  copts = {}
  for item in args.xla or ():
    k, _, v = item.partition("=")
    copts[k] = {"true": True, "false": False}.get(v.lower(), int(v) if v.isdigit() else v)
  call, compiled, compile_s = make_part(args.part, spec, model, mesh, copts or None)
  if args.dump_hlo:
    Path(args.dump_hlo).write_text(compiled.as_text())
  jax.block_until_ready(call())
  times = bench.timed(call, args.steps)
  out = {"config": args.config, "part": args.part, "batch_size": spec.training.batch_size,
         "dtype": spec.model.dtype, "xla_options": copts,
         "compile_s": round(compile_s, 3),
         "median_s": round(statistics.median(times), 4), **hlo_stats(compiled)}
  if args.trace_calls:
    by_name, count, wall = profile(call, args.trace_calls)
    # Only leaf-ish events: drop the enclosing program / thread-pool events by keeping names
    # that look like HLO ops.
    hlo = {k: v for k, v in by_name.items() if re.match(r"^[a-z][\w\-]*(\.\d+)*$", k)}
    kinds = collections.defaultdict(float)
    for k, v in hlo.items():
      kinds[kind_of(k)] += v
    top = sorted(hlo.items(), key=lambda kv: -kv[1])[: args.top]
    desc = describe_ops(compiled.as_text(), [k for k, _ in top])
    out["traced_wall_s"] = round(wall, 4)
    # Nested: a while loop's time includes the ops of its body.
    out["by_kind_s"] = {k: round(v, 4) for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])}
    out["top_ops_s"] = [[k, round(v, 4), count[k] // args.trace_calls, desc.get(k, "")]
                        for k, v in top]
    other = sorted(((k, v) for k, v in by_name.items() if k not in hlo), key=lambda kv: -kv[1])
    out["other_events_s"] = [[k, round(v, 4)] for k, v in other[:8]]
  print(json.dumps(out, indent=1))
  return out


if __name__ == "__main__":
  main()
