"""`python -m experiments.train` end to end on real Fashion-MNIST: train, eval, sample,
sample_eval."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]

TINY_CONFIG = '''
from experiments.configs import quickstart


def get_config():
  c = quickstart.get_config()
  c.model.unet = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                      with_fourier_features=False, input_skip=False)
  c.training.update(dict(batch_size=16, num_steps=30, steps_per_call=1, log_every=10,
                         eval_every=30, checkpoint_every=10, sample_every=30, keep_checkpoints=2))
  c.optimizer.update(dict(lr=1e-2, warmup_steps=5))
  c.eval.update(dict(num_time_samples=1, batch_size=2000, max_batches=2))
  c.sampling.update(dict(T=4, num_samples=6))
  c.sample_eval.update(dict(num_samples=10, T=3, max_features=10, kid_subsets=4,
                            kid_subset_size=5, per_device_batch=4))
  return c
'''


def run_cli(*args, timeout=300):
  env = dict(os.environ)
  env.pop("VDM_DATA_DIR", None)
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
  return proc


@pytest.mark.heavy
def test_cli_train_eval_sample(tmp_path):
  config = tmp_path / "tiny.py"
  config.write_text(TINY_CONFIG)
  workdir = tmp_path / "work"

  train = run_cli(f"--config={config}", f"--workdir={workdir}",
                  "--config.training.num_steps=30")
  assert "step 30/30: train bpd" in train.stderr
  assert "steps/s" in train.stderr and "images/s" in train.stderr and "ETA" in train.stderr
  assert "weighting elbo" in train.stderr

  records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  train_records = [r for r in records if "train/bpd" in r]
  assert [r["step"] for r in train_records] == [10, 20, 30]
  for key in ("train/loss", "train/recon_bpd", "train/prior_bpd", "train/diffusion_bpd",
              "train/grad_norm", "train/lr", "steps_per_s", "images_per_s"):
    assert all(np.isfinite(r[key]) for r in train_records), key
  eval_records = [r for r in records if "eval/bpd" in r]
  assert [r["step"] for r in eval_records] == [30]
  assert 0 < eval_records[0]["eval/bpd"] < 8 and eval_records[0]["eval/bpd_se"] > 0

  assert list(workdir.glob("events.out.tfevents.*")), "no TensorBoard events"
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == \
      ["20", "30"]
  png = Image.open(workdir / "samples" / "step_30.png")
  assert png.mode == "L" and png.size[0] > 28
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["training"]["num_steps"] == 30 and saved["model"]["unet"]["ch"] == 8

  # eval: the latest checkpoint, with the config the run left in the workdir.
  ev = run_cli(f"--workdir={workdir}", "--mode=eval")
  assert "step 30: test bpd" in ev.stdout
  result = json.loads(ev.stdout.strip().splitlines()[-1])
  assert result["step"] == 30 and np.isfinite(result["eval/bpd"]) and result["eval/bpd"] < 8
  assert result["eval/num_images"] == 4000   # eval.max_batches=2 of 2000
  assert (workdir / "eval_step_30.json").exists()
  # The same checkpoint and eval key as the training run's final eval: the same number.
  np.testing.assert_allclose(result["eval/bpd"], eval_records[0]["eval/bpd"], rtol=1e-5)
  # sample: an older checkpoint, chosen with --checkpoint_step.
  sm = run_cli(f"--workdir={workdir}", "--mode=sample", "--num_samples=5", "--checkpoint_step=20")
  assert "step 20: 5 samples in" in sm.stdout
  shards = sorted((workdir / "samples_step_20").glob("chunk_*-process_0.npz"))
  images = np.concatenate([np.load(p)["images"] for p in shards])
  assert images.shape == (5, 28, 28, 1) and images.dtype == np.uint8
  assert (workdir / "samples_step_20.png").exists()
  # sample_eval: FD, KID, precision/recall of the latest checkpoint; the reference statistics
  # are computed once into the cache, then read.
  cache = tmp_path / "cache"
  se = run_cli(f"--config={config}", f"--workdir={workdir}", "--mode=sample_eval",
               f"--config.sample_eval.cache_dir={cache}")
  assert "step 30: FD " in se.stdout and "KID" in se.stdout and "precision" in se.stdout
  record = json.loads(se.stdout.strip().splitlines()[-1])
  assert record["sample_eval/num_samples"] == 10 and record["sample_eval/fd"] > 0
  assert (workdir / "sample_eval_step_30_ddim-3_n10.json").exists()
  assert len(list((cache / "reference_stats").glob("*.npz"))) == 1
  again = run_cli(f"--config={config}", f"--workdir={workdir}", "--mode=sample_eval",
                  f"--config.sample_eval.cache_dir={cache}", "--config.sample_eval.T=2")
  assert "reference statistics of fashion_mnist/test from" in again.stderr
  assert (workdir / "sample_eval_step_30_ddim-2_n10.json").exists()


def test_cli_bad_config_message(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py",
       f"--workdir={tmp_path / 'w'}", "--config.model.gamma_min=6.0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert "config.model: gamma_min (6.0) must be < gamma_max (5.0)" in proc.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("flags, message", [
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
     "--process_id=2 must lie in [0, --num_processes=2)"),
    (["--coordinator_address=127.0.0.1:1", "--num_processes=2"], "--process_id missing"),
    (["--coordinator_address=localhost", "--num_processes=2", "--process_id=0"],
     "--coordinator_address must be host:port"),
])
def test_cli_bad_distributed_flags(tmp_path, flags, message):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.train", "--config=experiments/configs/quickstart.py",
       f"--workdir={tmp_path / 'w'}", *flags],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0 and message in proc.stderr, proc.stderr[-2000:]
  assert not (tmp_path / "w").exists()
