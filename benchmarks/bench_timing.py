"""Timing and reporting for the benchmarks: compile time from JAX's own events, the CPU other
processes used meanwhile, peak memory, the device, timed calls and their summary, FLOPs and MFU."""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import time

import jax
import numpy as np

import flops  # benchmarks/flops.py



class CompileTimer:
  """Sums JAX's own trace / lowering / XLA-compile durations (jax.monitoring events)."""
  EVENTS = {"/jax/core/compile/jaxpr_trace_duration": "trace_s",
            "/jax/core/compile/jaxpr_to_mlir_module_duration": "lower_s",
            "/jax/core/compile/backend_compile_duration": "xla_compile_s"}

  def __init__(self):
    self.totals = {v: 0.0 for v in self.EVENTS.values()}
    jax.monitoring.register_event_duration_secs_listener(self._listen)

  def _listen(self, event, duration, **kwargs):
    name = self.EVENTS.get(event)
    if name is not None:
      self.totals[name] += duration

  def reset(self):
    for k in self.totals:
      self.totals[k] = 0.0

  def snapshot(self) -> dict:
    out = {k: round(v, 3) for k, v in self.totals.items()}
    out["compile_s"] = round(sum(self.totals.values()), 3)
    return out


class CpuWatch:
  """Cores' worth of CPU used by OTHER processes while the benchmark ran (Linux /proc/stat):
  (busy CPU seconds of the machine - this process's CPU seconds) / wall seconds. Near 0 on a
  quiet machine; a shared machine makes every timing here slower."""

  def __init__(self):
    self.start = self._read()

  @staticmethod
  def _read():
    try:
      with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
      return None
    tick = os.sysconf("SC_CLK_TCK")
    busy = (sum(fields) - fields[3] - (fields[4] if len(fields) > 4 else 0)) / tick
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return busy, ru.ru_utime + ru.ru_stime, time.perf_counter()

  def other_load(self):
    end = self._read()
    if self.start is None or end is None or end[2] <= self.start[2]:
      return None
    other = (end[0] - self.start[0]) - (end[1] - self.start[1])
    return round(max(0.0, other) / (end[2] - self.start[2]), 2)


def peak_rss_mib() -> float:
  ru = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  # Linux reports KiB, macOS bytes.
  return round(ru / (1024.0 * 1024.0) if sys.platform == "darwin" else ru / 1024.0, 1)


def device_info() -> dict:
  d = jax.devices()[0]
  info = {"device": f"{d.platform}:{d.device_kind}", "platform": d.platform,
          "device_kind": d.device_kind, "num_devices_visible": jax.device_count(),
          "jax": jax.__version__, "cpu_count": os.cpu_count(), "host": platform.node()}
  if os.environ.get("XLA_FLAGS"):
    info["xla_flags"] = os.environ["XLA_FLAGS"]
  return info


def random_images(rng, batch, shape, vocab_size):
  return rng.integers(0, vocab_size, (batch, *shape), dtype=np.int64).astype(
      np.uint8 if vocab_size <= 256 else np.int32)


def timed(fn, n):
  """Runs fn() n times (each waits for its outputs); returns the list of seconds."""
  times = []
  for _ in range(n):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t0)
  return times


def summary(times):
  return {"median": statistics.median(times), "min": min(times), "max": max(times),
          "n": len(times)}


def r(x, nd=4):
  return float(f"{x:.{nd}g}")


def model_flops(model, spec, images_per_s: float, kind: str) -> dict:
  """The network's analytic FLOPs per image (`flops.network_flops_per_image`: "train" = forward
  + backward, "forward" for one network evaluation), the model TFLOP/s they make at
  `images_per_s` (for sampling: network evaluations per second), and the MFU against the
  device's dense peak for the compute dtype (null for devices without a tabulated peak)."""
  per_image = flops.network_flops_per_image(model)
  achieved = per_image[kind] * images_per_s
  util = flops.mfu(achieved, jax.devices()[0].device_kind, spec.model.dtype)
  return {"model_gflops_per_image": {k: r(v / 1e9, 6) for k, v in per_image.items()},
          "model_tflops_per_s": r(achieved / 1e12), "mfu": None if util is None else r(util)}
