"""Metrics to `metrics.jsonl` and TensorBoard, and image grids as PNG.

    writer = MetricsWriter(workdir)              # only process 0 writes
    writer.write(step, {"train/bpd": 3.9, "steps_per_s": 12.0})
    save_image_grid(images, "samples/step_100.png")
    with Progress(total=1000, desc="train", unit="step") as bar:
      bar.update(10, bpd=3.9)                  # a tqdm bar on an interactive terminal only

`metrics.jsonl` gets one JSON object per call: {"step": ..., "time": <unix seconds>, **scalars}.
TensorBoard event files (tensorboardX) go to the workdir itself.
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np


def _to_python(v: Any) -> Any:
  """Scalars (numpy, jax, python) -> python float/int; non-finite floats stay (as NaN/inf)."""
  if isinstance(v, (str, bool)) or v is None:
    return v
  arr = np.asarray(v)
  if arr.ndim:
    raise ValueError(f"metrics must be scalars, got shape {arr.shape}")
  if np.issubdtype(arr.dtype, np.integer):
    return int(arr)
  return float(arr)


class MetricsWriter:
  """Appends scalar metrics to `<workdir>/metrics.jsonl` and to TensorBoard events.

  Args:
    workdir: the folder.
    enabled: write anything at all (pass `jax.process_index() == 0`).
    tensorboard: also write TensorBoard event files (tensorboardX) into `workdir`.
  """

  def __init__(self, workdir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
    self.workdir = Path(workdir)
    self.enabled = enabled
    self.path = self.workdir / "metrics.jsonl"
    self._tb = None
    if enabled:
      self.workdir.mkdir(parents=True, exist_ok=True)
      if tensorboard:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(logdir=str(self.workdir), flush_secs=30)

  def write(self, step: int, metrics: Mapping[str, Any]) -> dict:
    """Writes one record; returns it (python scalars)."""
    record = {"step": int(step), "time": round(time.time(), 3)}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    if not self.enabled:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k in ("step", "time") or isinstance(v, (str, bool)) or v is None:
          continue
        self._tb.add_scalar(k, v, int(step))
    return record

  def write_text(self, step: int, tag: str, text: str) -> None:
    if self.enabled and self._tb is not None:
      self._tb.add_text(tag, text, int(step))

  def write_images(self, step: int, tag: str, grid: np.ndarray) -> None:
    """A uint8 [H, W, C] image to TensorBoard."""
    if self.enabled and self._tb is not None:
      self._tb.add_image(tag, grid, int(step), dataformats="HWC")

  def flush(self) -> None:
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def read_metrics(workdir: str | os.PathLike) -> list[dict]:
  """All records of `<workdir>/metrics.jsonl` (NaN/Infinity parsed as floats)."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_metrics(workdir: str | os.PathLike, keep_through: int | None) -> int:
  """Keeps the records of `<workdir>/metrics.jsonl` with step <= keep_through (None: none), so
  that a resumed run continues one history instead of repeating the steps after its checkpoint
  (a start event at keep_through itself belongs to a run that did not get past it: dropped too).
  The file is replaced atomically; a torn last line (a crash mid-write) is dropped. Returns the
  number of records dropped."""
  path = Path(workdir) / "metrics.jsonl"
  if not path.exists():
    return 0
  kept, dropped = [], 0
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    except ValueError:
      dropped += 1
      continue
    step = record.get("step", 0)
    if keep_through is not None and (step < keep_through or (
        step == keep_through and record.get("event") != "start")):
      kept.append(line)
    else:
      dropped += 1
  if dropped:
    tmp = path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
  return dropped


def image_grid(images: np.ndarray, ncols: int | None = None, padding: int = 2,
               vocab_size: int = 256) -> np.ndarray:
  """Integer images [N, H, W, C] in [0, vocab_size) -> one uint8 image [rows*(H+p)+p, ..., C].

  C must be 1 or 3; values are rescaled to 0..255 when vocab_size != 256. Empty cells are black.
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"images must be [N, H, W, 1 or 3], got shape {images.shape}")
  n, h, w, c = images.shape
  if vocab_size != 256:
    images = np.round(images.astype(np.float64) * 255.0 / (vocab_size - 1))
  images = np.clip(images, 0, 255).astype(np.uint8)
  ncols = ncols or max(1, int(math.ceil(math.sqrt(n))))
  nrows = max(1, int(math.ceil(n / ncols)))
  grid = np.zeros((nrows * (h + padding) + padding, ncols * (w + padding) + padding, c), np.uint8)
  for i in range(n):
    r, col = divmod(i, ncols)
    y, x = padding + r * (h + padding), padding + col * (w + padding)
    grid[y:y + h, x:x + w] = images[i]
  return grid


def save_image_grid(images: np.ndarray, path: str | os.PathLike, ncols: int | None = None,
                    vocab_size: int = 256) -> np.ndarray:
  """Writes `image_grid(images)` as a PNG (grayscale for C = 1); returns the grid."""
  from PIL import Image
  grid = image_grid(images, ncols, vocab_size=vocab_size)
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
  return grid


def save_samples(samples: np.ndarray, stem: str | os.PathLike, vocab_size: int | None,
                 ncols: int | None = None) -> tuple[Path, np.ndarray | None]:
  """Writes samples where a person can look at them: integer images [N, H, W, 1 or 3] of a
  discrete data model (vocab_size) as the PNG grid `stem`.png (ncols columns; None: about
  square), anything else (continuous data, other shapes) as the array `stem`.npy. Returns (the
  path written, the grid or None)."""
  samples = np.asarray(samples)
  stem = Path(stem)
  stem.parent.mkdir(parents=True, exist_ok=True)
  if vocab_size is not None and samples.ndim == 4 and samples.shape[-1] in (1, 3) and \
      np.issubdtype(samples.dtype, np.integer):
    path = stem.with_suffix(".png")
    return path, save_image_grid(samples, path, ncols, vocab_size=vocab_size)
  path = stem.with_suffix(".npy")
  np.save(path, samples)
  return path, None


def format_duration(seconds: float) -> str:
  """'1h02m03s' / '2m03s' / '3.2s'."""
  if not math.isfinite(seconds):
    return "?"
  if seconds < 60:
    return f"{seconds:.1f}s"
  m, s = divmod(int(round(seconds)), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def interactive() -> bool:
  """Whether progress bars are drawn: on process 0 when stderr is a terminal or the code runs in
  a notebook kernel, unless VDM_PROGRESS=0. Elsewhere (logs to a file, batch jobs, other
  processes) the log lines say the same once per logging period, without carriage returns
  filling the log."""
  if os.environ.get("VDM_PROGRESS", "1") == "0":
    return False
  import jax
  return jax.process_index() == 0 and (sys.stderr.isatty() or "ipykernel" in sys.modules)


class Progress:
  """A tqdm bar over `total` units when `enabled` (default `interactive()`), else nothing.

  Args:
    total: units in all (steps, batches, chunks); None when unknown.
    desc: the bar's label.
    unit: what one unit is, e.g. "step".
    initial: units already done (a resumed run starts its bar there).
    enabled: None for `interactive()`.
    file: where the bar goes (default stderr).
  """

  def __init__(self, total: int | None, desc: str, unit: str = "it", *, initial: int = 0,
               enabled: bool | None = None, file=None):
    self._bar = None
    if interactive() if enabled is None else enabled:
      from tqdm import tqdm
      self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=file,
                       dynamic_ncols=True, smoothing=0.1)

  def update(self, n: int = 1, **postfix: float) -> None:
    """Advances by n units; postfix values (e.g. bpd=3.9) are shown after the bar."""
    if self._bar is None:
      return
    if postfix:
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in postfix.items()}, refresh=False)
    self._bar.update(n)

  def close(self) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None

  def __enter__(self) -> "Progress":
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def progress_iter(iterable, total: int | None, desc: str, unit: str = "it", **kwargs):
  """Yields from `iterable`, advancing a `Progress` bar by one per item."""
  with Progress(total, desc, unit, **kwargs) as bar:
    for item in iterable:
      yield item
      bar.update()
