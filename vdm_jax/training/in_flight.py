"""The training loop's bookkeeping between its calls: the metrics of train calls still in
flight (`Pending`), steps per second (`Throughput`), and pre-emption by SIGTERM
(`Preemption`)."""
from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Mapping

import jax
import numpy as np

logger = logging.getLogger("vdm_jax.training.loop")   # the loop's log lines, one logger


MAX_CALLS_IN_FLIGHT = 2


class Pending:
  """Metrics of train calls not yet looked at (device arrays; fetched when an action is due)."""

  def __init__(self):
    self.items: list[tuple[int, Mapping[str, jax.Array]]] = []

  def add(self, first_step: int, metrics: Mapping[str, jax.Array]) -> None:
    """Records a call's metrics, and waits for the call before the previous one: at most
    MAX_CALLS_IN_FLIGHT train calls are dispatched and unfinished at any time. Why: XLA:CPU
    runs the calls of a multi-device program on one thread pool, and with many such calls
    queued the devices' threads can sit in the all-reduces of different calls (a rendezvous
    that never completes; XLA ends the process after 40 s). Two in flight keep the
    accelerator busy while the host prepares the next batch."""
    self.items.append((first_step, metrics))
    if len(self.items) > MAX_CALLS_IN_FLIGHT - 1:
      jax.block_until_ready(self.items[-MAX_CALLS_IN_FLIGHT][1])

  def collect(self) -> tuple[dict[str, np.ndarray], list[int]]:
    """Fetches everything: ({key: values over steps}, [1-based step numbers]); clears."""
    fetched = jax.device_get([m for _, m in self.items])
    steps: list[int] = []
    merged: dict[str, list] = {}
    for (first, _), m in zip(self.items, fetched):
      steps.extend(range(first + 1, first + len(m["train/loss"]) + 1))
      for k, v in m.items():
        merged.setdefault(k, []).append(np.asarray(v))
    self.items = []
    return {k: np.concatenate(v) for k, v in merged.items()}, steps


class Throughput:
  """Steps per second since the last mark; the first call (compilation included) on its own."""

  def __init__(self, step: int):
    self.mark_time, self.mark_step, self.first_call = time.perf_counter(), step, None

  def after_call(self, state, step: int) -> None:
    if self.first_call is None:
      jax.block_until_ready(state)
      self.first_call = (step - self.mark_step, time.perf_counter() - self.mark_time)
      logger.info("First train call (compilation + %d step(s)): %.1fs", *self.first_call)
      self.mark(step)

  def rate(self, step: int) -> float:
    if step > self.mark_step:
      return (step - self.mark_step) / max(time.perf_counter() - self.mark_time, 1e-9)
    return self.first_call[0] / self.first_call[1]   # a log right after the first call

  def mark(self, step: int) -> None:
    self.mark_time, self.mark_step = time.perf_counter(), step


class Preemption:
  """SIGTERM sets a flag that the loop reads at each step boundary (the handler itself does
  nothing else, so it is safe whatever the main thread is doing). With several processes, the
  flags are combined so that every process stops at the same step."""

  def __init__(self):
    self._flag, self._previous = False, None

  def _handle(self, signum, frame):
    self._flag = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def __call__(self) -> bool:
    if jax.process_count() == 1:
      return self._flag
    from jax.experimental import multihost_utils
    return bool(np.any(multihost_utils.process_allgather(np.int32(self._flag))))

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
