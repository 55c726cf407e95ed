"""Metrics files, image grids and durations."""
import io
import math
import sys

import numpy as np
import pytest

from vdm_jax import logging_utils


def test_metrics_writer_appends_records_and_reads_them_back(tmp_path):
  writer = logging_utils.MetricsWriter(tmp_path, tensorboard=False)
  writer.write(1, {"train/bpd": np.float32(3.5), "num": np.int64(7), "event": "start"})
  writer.write(2, {"train/bpd": float("nan")})
  writer.close()
  records = logging_utils.read_metrics(tmp_path)
  assert [r["step"] for r in records] == [1, 2]
  assert records[0]["train/bpd"] == 3.5 and records[0]["num"] == 7
  assert records[0]["event"] == "start" and math.isnan(records[1]["train/bpd"])
  with pytest.raises(ValueError, match="metrics must be scalars"):
    logging_utils.MetricsWriter(tmp_path, tensorboard=False).write(3, {"x": np.zeros(2)})


def test_disabled_writer_writes_nothing(tmp_path):
  logging_utils.MetricsWriter(tmp_path / "w", enabled=False).write(1, {"a": 1.0})
  assert not (tmp_path / "w").exists()


def test_image_grid_layout_and_rescaling():
  images = np.stack([np.full((2, 3, 1), v) for v in (1, 2, 3)])
  grid = logging_utils.image_grid(images, ncols=2, padding=1, vocab_size=4)
  assert grid.shape == (2 * 3 + 1, 2 * 4 + 1, 1) and grid.dtype == np.uint8
  assert grid[1, 1, 0] == 85 and grid[1, 5, 0] == 170 and grid[4, 1, 0] == 255
  assert grid[4, 5, 0] == 0 and grid[0, 0, 0] == 0      # empty cell and padding black
  with pytest.raises(ValueError, match=r"images must be \[N, H, W, 1 or 3\]"):
    logging_utils.image_grid(np.zeros((2, 4, 4, 2)))


def test_format_duration():
  assert logging_utils.format_duration(3.21) == "3.2s"
  assert logging_utils.format_duration(123) == "2m03s"
  assert logging_utils.format_duration(3723) == "1h02m03s"
  assert logging_utils.format_duration(float("nan")) == "?"


def test_truncate_metrics_keeps_one_history(tmp_path):
  writer = logging_utils.MetricsWriter(tmp_path, tensorboard=False)
  for step, record in [(0, {"event": "start"}), (2, {"train/bpd": 5.0}), (4, {"train/bpd": 4.0}),
                       (4, {"eval/bpd": 4.1}), (4, {"event": "start"}), (6, {"train/bpd": 3.0})]:
    writer.write(step, record)
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "train/b')            # a line torn by a crash
  assert logging_utils.truncate_metrics(tmp_path, 4) == 3
  records = logging_utils.read_metrics(tmp_path)
  assert [(r["step"], sorted(set(r) - {"step", "time"})) for r in records] == [
      (0, ["event"]), (2, ["train/bpd"]), (4, ["train/bpd"]), (4, ["eval/bpd"])]
  assert logging_utils.truncate_metrics(tmp_path, 4) == 0
  assert logging_utils.truncate_metrics(tmp_path, None) == 4
  assert logging_utils.read_metrics(tmp_path) == []


def test_progress_draws_a_bar_only_when_enabled(monkeypatch):
  out = io.StringIO()
  with logging_utils.Progress(10, "train", "step", initial=4, enabled=True, file=out) as bar:
    bar.update(2, bpd=3.91234)
    bar.update(4)
  text = out.getvalue()
  assert "train" in text and "10/10" in text and "bpd=3.912" in text
  quiet = io.StringIO()
  items = list(logging_utils.progress_iter(range(3), 3, "eval", enabled=False, file=quiet))
  assert items == [0, 1, 2] and quiet.getvalue() == ""
  # Under pytest stderr is not a terminal: no bar by default; VDM_PROGRESS=0 always turns it off.
  assert not logging_utils.interactive()
  monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
  assert logging_utils.interactive()
  monkeypatch.setenv("VDM_PROGRESS", "0")
  assert not logging_utils.interactive()
