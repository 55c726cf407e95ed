"""The config: every field checked once, resolved into frozen specs, errors that say the fix."""
import dataclasses
import importlib

import pytest

from experiments.configs import base
from helpers_train import tiny_config
from vdm_jax import config as config_lib

CONFIGS = ["base", "quickstart", "fashion_mnist", "mnist", "emnist", "cifar10", "cifar10_paper"]


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_resolves_and_documents_itself(name):
  module = importlib.import_module(f"experiments.configs.{name}")
  assert f"--config=experiments/configs/{name}.py" in module.__doc__
  assert "Hardware:" in module.__doc__ and "Result" in module.__doc__
  config = module.get_config()
  # Each config is base.py plus overrides: the same groups and fields.
  reference = base.get_config()
  for group in reference:
    assert set(config[group]) == set(reference[group]), group
  spec = config_lib.resolve(config, num_devices=8, num_processes=1)
  assert spec.model.weighting == "elbo" and spec.model.schedule_objective == "elbo"
  model = spec.model.build()
  assert type(model.network).__name__ == {"unet": "UNet", "vdm_unet": "VDMScoreNet"}[
      spec.model.network]
  hash(spec)   # frozen all the way down: specs key compile caches


def test_resolved_config_round_trips_through_json():
  spec = config_lib.resolve(tiny_config(**{"model.num_classes": 10}))
  again = config_lib.resolve(config_lib.from_json(spec.to_json()))
  assert again == spec
  assert again.model.build() == spec.model.build()


def test_paper_config_is_the_papers_model():
  from experiments.configs import cifar10_paper
  spec = config_lib.resolve(cifar10_paper.get_config(), num_devices=8)
  net = dict(spec.model.network_kwargs)
  assert (spec.model.network, net["n_embd"], net["n_layer"]) == ("vdm_unet", 128, 32)
  assert net["with_fourier_features"] and net["dropout"] == 0.1
  assert (spec.model.schedule, spec.model.gamma_min, spec.model.gamma_max) == \
      ("learned_linear", -13.3, 5.0)
  assert (spec.training.batch_size, spec.training.num_steps) == (128, 10_000_000)
  o = spec.optimizer
  assert (o.lr, o.ema_rate, o.weight_decay, o.grad_clip, o.warmup_steps) == \
      (2e-4, 0.9999, 0.01, 0.0, 100)
  # The official code's network layout and weight-decay mask.
  assert (net["cond_scalar_input"], net["attn_key_bias"], net["norm_groups"]) == (True, True, 32)
  assert o.weight_decay_mask == "all_but_biases"


@pytest.mark.parametrize("overrides, error, message", [
    ({"model.gamma_min": 5.0, "model.gamma_max": 5.0}, ValueError,
     r"config.model: gamma_min \(5.0\) must be < gamma_max \(5.0\)"),
    ({"training.batch_size": 12}, ValueError,
     r"config.training.batch_size=12 is not divisible by the number of devices \(8\): set "
     r"config.training.batch_size to a multiple of 8"),
    ({"eval.batch_size": 100}, ValueError,
     r"config.eval.batch_size=100 is not divisible by the number of devices \(8\)"),
    ({"model.image_shape": (32, 32, 3)}, ValueError,
     r"config.model.image_shape=\(32, 32, 3\) does not match dataset 'fashion_mnist', whose "
     r"images are \(28, 28, 1\): set config.model.image_shape = \(28, 28, 1\)"),
    ({"model.num_classes": 26}, ValueError,
     r"config.model.num_classes=26 but dataset 'fashion_mnist' has 10 classes"),
    ({"optimizer.decay": "exponential"}, ValueError,
     r"config.optimizer.decay must be one of 'none', 'linear', 'cosine'; got 'exponential'"),
    ({"model.weighting": "bogus"}, ValueError, r"config.model: Unknown weighting 'bogus'"),
    ({"model.network": "resnet"}, ValueError,
     r"config.model.network must be one of 'vdm_unet', 'unet', 'mlp', 'noisy_classifier', 'autoencoder'; got 'resnet'"),
    ({"model.dtype": "float64"}, ValueError, r"config.model.dtype must be one of"),
    ({"data.name": "imagenet"}, ValueError, r"Unknown dataset 'imagenet'; valid names: "),
    ({"training.label_dropout": 0.1}, ValueError,
     r"config.training has no field label_dropout; valid fields: batch_size, checkpoint_every"),
    ({"model.unet": {"ch": 8, "channels": 3}}, ValueError,
     r"config.model.unet has no field channels; valid fields of UNet: attn_key_bias, "
     r"attn_resolutions, ch, "),
    ({"training.steps_per_call": 0}, ValueError,
     r"config.training.steps_per_call must be an int >= 1, got 0"),
    ({"training.num_steps": -1}, ValueError, r"config.training.num_steps must be an int >= 0"),
    ({"optimizer.ema_rate": 1.0}, ValueError,
     r"config.optimizer.ema_rate must be a finite number in \[0.0, 1.0\), got 1.0"),
    ({"optimizer.lr": 0.0}, ValueError, r"config.optimizer.lr must be a finite number in \(0.0"),
    ({"optimizer.weight_decay_mask": "all"}, ValueError,
     r"config.optimizer.weight_decay_mask must be one of 'kernels', 'all_but_biases'; got 'all'"),
    ({"eval.num_time_samples": 0}, ValueError, r"config.eval.num_time_samples must be an int >= 1"),
    ({"eval.max_batches": 0}, ValueError, r"config.eval.max_batches must be an int >= 1 or None"),
    ({"sampling.sampler": "euler"}, ValueError,
     r"config.sampling.sampler must be one of 'ancestral', 'ddim', 'dpmpp_2m', 'dpmpp_3m', 'unipc', 'ode'; got 'euler'"),
    ({"sampling.sampler": "ode", "sampling.eta": 0.0}, ValueError,
     r"config.sampling: sampler='ode' takes no eta"),
    ({"sampling.rtol": 0.0}, ValueError,
     r"config.sampling.rtol must be a finite number in \(0.0, 1.0\), got 0.0"),
    ({"sampling.atol": 1.0}, ValueError, r"config.sampling.atol must be a finite number in"),
    ({"eval.method": "flow"}, ValueError,
     r"config.eval.method must be one of 'elbo', 'ode'; got 'flow'"),
    ({"eval.trace": "full"}, ValueError,
     r"config.eval.trace must be one of 'exact', 'hutchinson'; got 'full'"),
    ({"eval.rtol": -1e-3}, ValueError, r"config.eval.rtol must be a finite number in \(0.0"),
    ({"eval.method": "ode", "eval.T": 10}, ValueError,
     r"config.eval.T=10 sets the ELBO's time discretisation: method='ode' takes none"),
    ({"sampling.eta": 0.5}, ValueError, r"config.sampling: sampler='ancestral' always uses eta=1"),
    ({"sampling.T": 0}, ValueError, r"config.sampling.T must be an int >= 1"),
    ({"sampling.guidance_weight": 1.0}, ValueError,
     r"config.sampling.guidance_weight=1.0 needs a class-conditional model"),
])
def test_bad_config_says_what_to_change(overrides, error, message):
  with pytest.raises(error, match=message):
    config_lib.resolve(tiny_config(**overrides))


def test_missing_group_and_missing_field():
  config = tiny_config()
  del config["sampling"]
  with pytest.raises(ValueError, match=r"config has no 'sampling' group; start from "
                     r"experiments/configs/base.py"):
    config_lib.resolve(config)
  config = tiny_config()
  del config.optimizer["b2"]
  with pytest.raises(ValueError, match=r"config.optimizer lacks b2: every field is in "
                     r"experiments/configs/base.py"):
    config_lib.resolve(config)


@pytest.mark.parametrize("group,fields", [
    ("optimizer", ("weight_decay_mask",)),
    ("eval", ("method", "trace", "rtol", "atol")),
    ("sampling", ("per_device_batch", "rtol", "atol")),
])
def test_a_config_saved_before_the_newer_fields_resolves_with_their_defaults(group, fields):
  """A run's config.json written before these fields existed: each resolves to the spec's
  default, which is also base.py's value."""
  config = tiny_config()
  defaults = base.get_config()[group]
  for name in fields:
    del config[group][name]
  resolved = getattr(config_lib.resolve(config), group)
  for name in fields:
    assert getattr(resolved, name) == defaults[name], name


def test_network_fields_default_to_the_networks_own():
  config = tiny_config()
  config.model.unet = {"ch": 8, "ch_mult": (1, 2), "attn_resolutions": ()}
  spec = config_lib.resolve(config)
  net = spec.model.build().network
  assert (net.ch, net.num_res_blocks, net.dropout) == (8, 2, 0.1)   # nets.UNet's defaults


def test_specs_are_frozen():
  spec = config_lib.resolve(tiny_config())
  with pytest.raises(dataclasses.FrozenInstanceError):
    spec.training.num_steps = 5


def test_sampler_kwargs_give_each_sampler_its_own_arguments():
  chain = config_lib.resolve(tiny_config(**{"sampling.sampler": "ddim", "sampling.eta": 0.5}))
  assert chain.sampling.sampler_kwargs() == {"sampler": "ddim", "T": chain.sampling.T,
                                             "eta": 0.5, "spacing": None, "order": None}
  fast = config_lib.resolve(tiny_config(**{"sampling.sampler": "unipc", "sampling.order": 2,
                                           "sampling.spacing": "karras"}))
  assert fast.sampling.sampler_kwargs() == {"sampler": "unipc", "T": fast.sampling.T,
                                            "eta": None, "spacing": "karras", "order": 2}
  for overrides, message in [({"sampling.sampler": "ddim", "sampling.order": 2}, "takes no order"),
                             ({"sampling.sampler": "unipc", "sampling.order": 4}, r"order in \(2, 3\)"),
                             ({"sampling.spacing": "cosine"}, "Unknown spacing 'cosine'"),
                             ({"sample_eval.sampler": "ode", "sample_eval.spacing": "logsnr"},
                              "config.sample_eval: spacing places the steps of a chain")]:
    with pytest.raises(ValueError, match=message):
      config_lib.resolve(tiny_config(**overrides))
  flow = config_lib.resolve(tiny_config(**{"sampling.sampler": "ode", "sampling.rtol": 1e-3,
                                           "eval.method": "ode"}))
  assert flow.sampling.sampler_kwargs() == {"sampler": "ode", "rtol": 1e-3,
                                            "atol": flow.sampling.atol}
  assert flow.eval.method == "ode" and flow.eval.trace == "hutchinson"
