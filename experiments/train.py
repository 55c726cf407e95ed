"""Train, evaluate or sample a VDM from the command line.

    python -m experiments.train --config=experiments/configs/quickstart.py --workdir=/tmp/qs
    python -m experiments.train --config=experiments/configs/quickstart.py --workdir=/tmp/qs \\
        --config.training.num_steps=100 --config.optimizer.lr=1e-3      # overrides
    python -m experiments.train --workdir=/tmp/qs --mode=eval            # test bpd, latest ckpt
    python -m experiments.train --workdir=/tmp/qs --mode=eval --checkpoint_step=1000
    python -m experiments.train --workdir=/tmp/qs --mode=sample --num_samples=100
    python -m experiments.train --workdir=/tmp/qs --mode=sample_eval      # FD, KID, P/R
    python -m experiments.train --workdir=/tmp/qs --mode=sample --config=/tmp/qs/config.json \
        --config.sampling.classifier_workdir=/tmp/clf --config.sampling.classifier_scale=2

--mode=train resumes from the newest usable checkpoint in <workdir>/checkpoints when there is
one (a damaged step is skipped with a warning); one run at a time per workdir (a lock), and
SIGTERM saves a checkpoint and exits 0. --start_over and --allow_config_change are the explicit
ways past a workdir whose checkpoints do not restore or were written with other settings.
--mode=eval prints the test-set bpd (with its standard error) of a checkpoint's EMA parameters
and writes it to <workdir>/eval_step_<step>.json (metrics.jsonl is the training run's history).
--mode=sample draws --num_samples images over every device of every process, in chunks, into
shard files <workdir>/samples_step_<step>/chunk_<c>-process_<p>.npz (uint8 images, labels,
sample ids; a rerun with the same settings completes what is missing, one with others is
refused) and a grid <workdir>/samples_step_<step>.png.
--mode=sample_eval draws config.sample_eval.num_samples (or --num_samples) samples with its
sampler and prints FD, KID (+- std), precision and recall against the test split in the
feature network's space (and its class accuracy on conditional samples), written to
<workdir>/sample_eval_step_<step>_<sampler>-<T>_n<N>.json; the test statistics are cached.
A noisy classifier (config.model.network="noisy_classifier",
experiments/configs/noisy_classifier_fashion_mnist.py) trains and evaluates (accuracy by t-bin)
with the same modes; config.sampling / config.sample_eval .classifier_workdir and
.classifier_scale guide a diffusion run's samples by it (grids one class per column).
For eval, sample and sample_eval, --config defaults to the copy the training run left in
<workdir>/config.json (pass --config=<file> to override its fields, e.g. the sampler).
--official_checkpoint=<path> evaluates or samples a checkpoint of the official VDM code (a
ckpt-<n>.flax file or the checkpoints-0 folder holding it) instead, for the official-layout model
that --config describes (experiments/configs/cifar10_paper.py for its CIFAR-10 model); results go
to <workdir>/eval_official_step_<step>.json and <workdir>/samples_official_step_<step>/.
Multi-host: pass --multihost on every host (see vdm_jax/parallel.py).
"""
from __future__ import annotations

import json
import logging as py_logging

from absl import app, flags, logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Config file (experiments/configs/<name>.py); override fields with "
    "--config.<group>.<key>=<value>.", lock_config=True)
flags.DEFINE_string("workdir", None, "Folder for checkpoints, metrics, samples, config copy.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "sample_eval"], "What to do.")
flags.DEFINE_integer("checkpoint_step", None, "eval/sample/sample_eval: this step instead of "
                     "the latest.")
flags.DEFINE_integer("num_samples", None, "sample/sample_eval: how many (default "
                     "config.sampling.num_samples / config.sample_eval.num_samples).")
flags.DEFINE_integer("sample_seed", None, "sample/sample_eval: PRNG seed (default derived from "
                     "the config).")
flags.DEFINE_string("official_checkpoint", None, "eval/sample: a checkpoint of the official VDM "
                    "code (ckpt-<n>.flax, or the folder holding it) instead of the workdir's; "
                    "--config must describe its model (e.g. configs/cifar10_paper.py).")
flags.DEFINE_bool("multihost", False, "Several processes, found by JAX's auto-detection (TPU "
                  "pods, SLURM, Open MPI).")
flags.DEFINE_string("coordinator_address", None, "Several processes: host:port of process 0 "
                    "(the same on every process).")
flags.DEFINE_integer("num_processes", None, "Several processes: how many.")
flags.DEFINE_integer("process_id", None, "Several processes: this one's id, 0..num_processes-1.")
flags.DEFINE_integer("distributed_timeout_s", 300, "Several processes: seconds to wait for all "
                     "of them to join.")
flags.DEFINE_bool("start_over", False, "train: move the workdir's step folders to "
                  "checkpoints.incomplete/ and train from step 0.")
flags.DEFINE_bool("allow_config_change", False, "train: resume even though the checkpoint was "
                  "written with another dataset, seed or image shape.")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  from vdm_jax import parallel
  parallel.initialize_distributed(
      FLAGS.multihost, coordinator_address=FLAGS.coordinator_address,
      num_processes=FLAGS.num_processes, process_id=FLAGS.process_id,
      timeout_s=FLAGS.distributed_timeout_s)
  from vdm_jax import config as config_lib
  from vdm_jax import training

  # Our progress lines at INFO; orbax's own INFO chatter only with an explicit --verbosity.
  py_logging.getLogger("vdm_jax").setLevel(py_logging.INFO)
  if not FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)

  if FLAGS.official_checkpoint is not None and FLAGS.mode == "train":
    raise app.UsageError("--official_checkpoint is for --mode=eval, sample and sample_eval.")
  config = FLAGS.config
  if config is None:
    if FLAGS.mode == "train":
      raise app.UsageError("--config is required for --mode=train.")
    config = training.workdir.read_config(FLAGS.workdir)

  spec = config_lib.resolve(config)   # every check, before anything is read or written
  if FLAGS.mode == "train":
    result = training.train_and_evaluate(spec, FLAGS.workdir, start_over=FLAGS.start_over,
                                         allow_config_change=FLAGS.allow_config_change)
    if result.get("preempted"):
      print(f"step {result['step']}: stopped by SIGTERM after saving a checkpoint; the same "
            "command resumes it.")
  elif FLAGS.mode == "eval":
    record = training.evaluate_checkpoint(spec, FLAGS.workdir, FLAGS.checkpoint_step,
                                          official_checkpoint=FLAGS.official_checkpoint)
    if "eval/bpd" not in record:   # another objective than the diffusion model's
      print(f"step {record['step']}: "
            f"{training.objectives.of(spec.model.build()).eval_line(record)}")
      print(json.dumps(record))
      return
    # The bound's terms: recon + prior + diffusion (ELBO) or recon + z0_nll + dequant (ODE).
    terms = " + ".join(f"{name} {record[f'eval/{name}_bpd']:.4f}" for name in
                       ("recon", "prior", "diffusion", "z0_nll", "dequant")
                       if f"eval/{name}_bpd" in record)
    print(f"step {record['step']}: test bpd {record['eval/bpd']:.4f} +- "
          f"{record['eval/bpd_se']:.4f} over {record['eval/num_images']} images ({terms}); "
          f"{record['eval/bpd_meaning']}")
    print(json.dumps(record))
  elif FLAGS.mode == "sample_eval":
    record = training.sample_eval_checkpoint(spec, FLAGS.workdir, FLAGS.checkpoint_step,
                                             FLAGS.num_samples, seed=FLAGS.sample_seed,
                                             official_checkpoint=FLAGS.official_checkpoint)
    print(training.sample_eval.summary(record["step"], record))
    print(json.dumps(record))
  else:
    out = training.sample_checkpoint(spec, FLAGS.workdir, FLAGS.checkpoint_step,
                                     FLAGS.num_samples, seed=FLAGS.sample_seed,
                                     official_checkpoint=FLAGS.official_checkpoint)
    print(f"step {out['step']}: {out['num_samples']} samples in {out['dir']} ({out['written']} "
          f"chunks written, {out['skipped']} already there, {out['images_per_s']:.1f} "
          f"images/s), grid {out['png']}")


if __name__ == "__main__":
  app.run(main)
