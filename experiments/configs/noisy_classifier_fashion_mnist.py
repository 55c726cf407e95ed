"""A noisy classifier p(y | z_t) of Fashion-MNIST for classifier guidance of the quickstart model.

    python -m experiments.train --config=experiments/configs/noisy_classifier_fashion_mnist.py \\
        --workdir=/tmp/clf
    python -m experiments.train --workdir=/tmp/qs --mode=sample_eval \\
        --config=/tmp/qs/config.json --config.sample_eval.classifier_workdir=/tmp/clf \\
        --config.sample_eval.classifier_scale=2      # FD and the asked classes' accuracy

(`--config=<workdir>/config.json` starts from the diffusion run's own config; --mode=sample
with config.sampling.classifier_workdir / classifier_scale writes grids one class per column.)

Hardware: 2 CPU cores. The down-sampling half of a U-Net (16 base channels, 28 -> 14 -> 7, one
ResnetBlock per level conditioned on gamma_t) and a pooled head (81k parameters), trained
through the same loop as the diffusion models (checkpoints, resume, logs, several devices) on
the cross-entropy at z_t ~ q(z_t | x), t drawn as the VDM loss draws it; its eval logs the
test accuracy in 10 bins of t.

The schedule is the quickstart run's, held fixed: the quickstart learns a linear schedule, which
after its 1000 steps is the fixed linear one between gamma(0) = -12.839 and gamma(1) = 5.406
(its EMA parameters; `noisy_classifier.schedule_endpoints(model, state.ema_params)` reads them
from any run). Guiding a model trained with another schedule, set these two to its endpoints
(sampling warns when they differ).

Result (this exact config, one core of a 2-core CPU, 4000 steps in 13 minutes): test accuracy
0.878 at t = 0, 0.876 at t = 0.5, 0.411 at t = 0.9 (benchmarks/guidance_quality.py, every test
image); guided sampling of the quickstart model: the README's classifier-guidance section.
"""
from experiments.configs import base


def get_config():
  c = base.get_config()
  c.model.update(network="noisy_classifier", num_classes=10, schedule="fixed_linear",
                 gamma_min=-12.839, gamma_max=5.406)
  c.model.noisy_classifier.update(ch=16, ch_mult=(1, 2, 2), num_res_blocks=1, dropout=0.0)
  c.training.update(batch_size=64, num_steps=4000, steps_per_call=1, log_every=200,
                    eval_every=0, checkpoint_every=1000, sample_every=0, keep_checkpoints=2)
  c.optimizer.update(lr=2e-3, warmup_steps=200, decay="cosine", ema_rate=0.999)
  return c
