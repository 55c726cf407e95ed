"""The training system: optimizer, train state, step, loop, and the checkpoint modes.

    from vdm_jax import config as config_lib, training
    spec = config_lib.resolve(config)                 # checked before anything runs
    training.train_and_evaluate(spec, workdir)        # resumes from <workdir>/checkpoints
    training.evaluate_checkpoint(spec, workdir)       # test bpd of the latest checkpoint

Modules, one job each: `optimizer` (AdamW, schedules, weight-decay mask, EMA decay), `state`
(TrainState, the one function that builds it, restoring it from a run), `objectives` (what the
loop trains: a diffusion model or a noisy classifier, its loss, eval and log lines), `step`
(objective + update, jit-compiled and data-parallel), `actions` (eval and sample of given
parameters), `guidance` (a diffusion model guided by a noisy-classifier run), `sample_eval` (FD,
KID and precision/recall of samples), `sample_shards` (many samples in chunks), `loop` (the
periodic actions), `modes` (eval / sample / sample_eval from a checkpoint).
"""
from vdm_jax.training.actions import evaluate_params, sample_params
from vdm_jax.training.loop import Every, TrainingDiverged, train_and_evaluate
from vdm_jax.training.modes import evaluate_checkpoint, sample_checkpoint, sample_eval_checkpoint
from vdm_jax.training.sample_eval import SampleEvaluator
from vdm_jax.training.optimizer import (decay_mask, ema_decay, learning_rate,
                                        learning_rate_schedule, make_optimizer)
from vdm_jax.training.state import (TrainState, abstract_state, create_state, init_state,
                                    restore_state)
from vdm_jax.training.step import compiled_train_step, loss_fn, make_train_step

__all__ = [
    "Every", "TrainState", "TrainingDiverged", "abstract_state", "compiled_train_step",
    "create_state", "decay_mask", "ema_decay", "evaluate_checkpoint", "evaluate_params",
    "init_state", "learning_rate", "learning_rate_schedule", "loss_fn", "make_optimizer",
    "make_train_step", "restore_state", "SampleEvaluator", "sample_checkpoint",
    "sample_eval_checkpoint", "sample_params",
    "train_and_evaluate",
]
