"""Stage 2 of latent diffusion through the training system: a VDM on an autoencoder run's
latents (resume, the pixel bound at eval, decoded samples), the autoencoder's identity, and the
config checks."""
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_train import assert_same_saved_states, straight_and_resumed, tiny_config
from vdm_jax import config as config_lib, data, latent, logging_utils, parallel, training
from vdm_jax.training import latent_runs, objectives
from vdm_jax.training import workdir as workdir_lib

# A small Fashion-MNIST (1024 training and 400 test images): each stage-2 run encodes its
# training split once.
DATASET = "fashion_mnist_1k"
AE = {"data.name": DATASET, "model.network": "autoencoder", "model.schedule": "fixed_linear",
      "model.autoencoder": dict(latent_channels=2, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                kl_weight=0.5),
      "training.checkpoint_every": 2}
LATENT = {"data.name": DATASET, "model.unet": dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                             dropout=0.0, with_fourier_features=False),
          "eval.batch_size": 400, "sampling.T": 2, "sampling.num_samples": 4}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


@pytest.fixture(scope="module", autouse=True)
def _small_dataset():
  (train, train_labels), (test, test_labels) = (data.load_arrays("fashion_mnist", split)
                                                for split in ("train", "test"))
  data.register_arrays(DATASET, train[:1024], test[:400], train_labels=train_labels[:1024],
                       test_labels=test_labels[:400], num_classes=10, overwrite=True)


@pytest.fixture(scope="module")
def ae_dir(tmp_path_factory, _small_dataset):
  """A 2-step autoencoder run (checkpoint at step 2)."""
  workdir = tmp_path_factory.mktemp("ae")
  training.train_and_evaluate(config_lib.resolve(tiny_config(**AE)), workdir)
  return workdir


def _latent_spec(ae_dir, **overrides):
  return config_lib.resolve(tiny_config(**{**LATENT, "model.autoencoder_workdir": str(ae_dir),
                                           **overrides}))


@pytest.fixture(scope="module")
def latent_runs_dirs(ae_dir, tmp_path_factory):
  """A 4-step latent run straight, and one stopped at step 2 and resumed; eval and samples at
  step 4."""
  return straight_and_resumed(
      functools.partial(_latent_spec, ae_dir), tmp_path_factory.mktemp("latent"),
      **{"training.checkpoint_every": 2, "training.eval_every": 4, "training.sample_every": 4})


# The three stage-2 runs of `latent_runs_dirs` take a minute on 2 CPU cores: heavy tier. The
# default tier trains stage 2 by its compiled step (tests/test_parallel.py) and checks the pixel
# bound's parts by hand (tests/test_latent.py).
@pytest.mark.heavy
def test_the_latent_model_trains_resumes_bit_exact_and_decodes_its_samples(latent_runs_dirs):
  spec, straight, resumed, last = latent_runs_dirs
  model = spec.model.build()
  assert isinstance(model, latent.LatentVDM) and model.image_shape == (7, 7, 2)
  assert objectives.of(model) is objectives.LATENT_DIFFUSION
  assert_same_saved_states(straight, resumed, spec, (2, 4))
  records = logging_utils.read_metrics(resumed)
  assert [r["step"] for r in records if "train/latent_bpd" in r] == [1, 2, 3, 4]
  assert (resumed / "samples" / "step_4.png").is_file()      # decoded to pixels: a grid
  assert last["eval/num_images"] == 400 and last["eval/bpd_se"] > 0


@pytest.mark.heavy
def test_the_pixel_bound_at_eval_agrees_with_one_assembled_from_the_public_functions(
    latent_runs_dirs, ae_dir):
  """The loop's eval against a Monte-Carlo estimate built here from `latent.pixel_bound`,
  `losses.vdm_loss` and the decoder's likelihood (other keys), within 4 standard errors; and
  the parts' units by hand (bits per pixel dimension, the scale's change of variables)."""
  from vdm_jax import losses, model as model_lib
  spec, straight, _, last = latent_runs_dirs
  model, state, _ = training.restore_state(spec, straight, mesh=parallel.make_mesh())
  ae = latent_runs.load(str(ae_dir))
  assert last["eval/latent_scale"] == ae.scale
  images = jnp.asarray(data.load_arrays(DATASET, "test")[0])
  ae_vars = {"params": ae.params}
  mean, log_std = ae.model.apply(ae_vars, images, method=ae.model.encode)
  eps_fn, gamma_fn = model_lib.pure_fns(model, {"params": jax.device_get(state.ema_params)})
  dec = lambda z: ae.model.apply(ae_vars, images, z, method=ae.model.decoder_nll)
  lat = lambda u, k: losses.vdm_loss(eps_fn, gamma_fn, u, k, data=model.data).total
  totals = np.stack([np.asarray(latent.pixel_bound(mean, log_std, dec, lat, jax.random.PRNGKey(
      100 + i), scale=ae.scale).total) for i in range(4)]).mean(0) / (784 * math.log(2))
  se = math.hypot(totals.std(ddof=1) / math.sqrt(len(totals)), last["eval/bpd_se"])
  assert abs(totals.mean() - last["eval/bpd"]) < 4 * se, (totals.mean(), last["eval/bpd"], se)
  # The parts: the decoder's NLL and the entropy of q(z | x) (closed form, no draws) by hand.
  want_entropy = np.mean(np.sum(np.asarray(log_std, np.float64).reshape(400, -1)
                                + 0.5 * (1 + math.log(2 * math.pi)), axis=1)) / (784 * math.log(2))
  np.testing.assert_allclose(last["eval/encoder_entropy_bpd"], want_entropy, rtol=1e-5)


@pytest.mark.heavy   # three more runs: a minute on 2 CPU cores
def test_a_changed_autoencoder_checkpoint_is_refused_on_resume(ae_dir, latent_runs_dirs,
                                                               tmp_path):
  import shutil
  spec, straight, _, _ = latent_runs_dirs
  ae_copy, run_copy = tmp_path / "ae", tmp_path / "run"
  shutil.copytree(ae_dir, ae_copy)
  # The stage-2 run, its checkpoints pointing at the copy of the autoencoder.
  spec6 = _latent_spec(ae_copy, **{"training.num_steps": 6, "training.checkpoint_every": 2})
  training.train_and_evaluate(_latent_spec(ae_copy, **{"training.num_steps": 2,
                                                       "training.checkpoint_every": 2}),
                              run_copy)
  metrics_before = (run_copy / "metrics.jsonl").read_bytes()
  # The autoencoder trains on: its latest checkpoint is another one.
  training.train_and_evaluate(config_lib.resolve(tiny_config(**{**AE, "training.num_steps": 4})),
                              ae_copy)
  with pytest.raises(workdir_lib.CheckpointMismatchError,
                     match=r"trained on another autoencoder checkpoint \(autoencoder_step: "
                           r"checkpoint 2, now 4.*Set config.model.autoencoder_step"):
    training.train_and_evaluate(spec6, run_copy)
  assert (run_copy / "metrics.jsonl").read_bytes() == metrics_before
  # Pinned to the step it was trained on, it resumes.
  pinned = _latent_spec(ae_copy, **{"training.num_steps": 3, "training.checkpoint_every": 2,
                                    "model.autoencoder_step": 2})
  training.train_and_evaluate(pinned, run_copy)
  assert [r["step"] for r in logging_utils.read_metrics(run_copy) if "train/latent_bpd" in r] \
      == [1, 2, 3]


@pytest.mark.heavy
def test_sample_and_sample_eval_of_a_latent_run_measure_its_decoded_pixels(
    latent_runs_dirs, ae_dir, tmp_path):
  """--mode=sample writes pixels: the latent chains drawn here with `sampling.sample_model`
  (chunk keys fold_in(key, c)) and decoded by the autoencoder at z = u / s; --mode=sample_eval
  measures those same samples: FD against the test split's features computed here."""
  from vdm_jax import metrics, sampling
  from vdm_jax.training import modes, sample_shards
  how = {"sampler": "ddim", "T": 2, "per_device_batch": 1}
  spec = _latent_spec(ae_dir, **{f"sampling.{k}": v for k, v in how.items()}, **{
      **{f"sample_eval.{k}": v for k, v in how.items()}, "sample_eval.num_samples": 16,
      "sample_eval.max_features": 16, "sample_eval.kid_subsets": 2,
      "sample_eval.kid_subset_size": 8, "sample_eval.feature_network": "fashion_mnist",
      "sample_eval.cache_dir": str(tmp_path / "cache")})
  _, straight, _, _ = latent_runs_dirs
  out = modes.sample_checkpoint(spec, straight, num_samples=16, seed=7)
  shards = sample_shards.read_shards(out["dir"])
  assert shards["images"].dtype == np.uint8 and shards["images"].shape == (16, 28, 28, 1)
  assert Path(out["png"]).is_file()

  model, state, _ = training.restore_state(spec, straight, mesh=parallel.make_mesh())
  ae = latent_runs.load(str(ae_dir))
  variables = {"params": jax.device_get(state.ema_params)}
  u = np.concatenate([np.asarray(sampling.sample_model(
      model, variables, jax.random.fold_in(jax.random.PRNGKey(7), c), 8, sampler="ddim", T=2))
      for c in range(2)])
  assert u.shape == (16, 7, 7, 2) and u.dtype == np.float32
  want = np.asarray(ae.model.apply({"params": ae.params}, jnp.asarray(u / ae.scale),
                                   method=ae.model.decode))
  # One device here, eight there: a latent within float32 rounding of a bin edge may round
  # to the neighbouring pixel value.
  assert np.mean(want == shards["images"]) > 0.99
  assert np.max(np.abs(want.astype(int) - shards["images"])) <= 1

  record = modes.sample_eval_checkpoint(spec, straight, seed=7)
  net = metrics.load_feature_network("fashion_mnist")
  real = np.asarray(net.feature_fn(data.load_arrays(DATASET, "test")[0]))
  fake = np.asarray(net.feature_fn(shards["images"]))
  fd = metrics.frechet_distance(metrics.feature_stats(real), metrics.feature_stats(fake))
  np.testing.assert_allclose(record["sample_eval/fd"], fd, rtol=1e-6)
  assert record["sample_eval/num_samples"] == 16 and record["sample_eval/reference_count"] == 400


# Four distinct binary 8x8 images, uniformly: the data's entropy is log 4 nats per image, and
# any bound on -log p(x) averaged over them is at least that.
KNOWN_K = 4


@pytest.mark.heavy   # two trainings of a few hundred steps: a minute on 2 CPU cores
def test_on_data_of_known_entropy_both_stages_bound_it_from_above_and_come_close(tmp_path):
  """Stage 1's bound (decoder NLL + KL to N(0, I)) and stage 2's pixel bound (decoder NLL -
  entropy of q(z | x) + the latent VDM bound) of trained tiny models are >= log K - 4 s.e.,
  and within 4 nats of it (an untrained model is ~44 nats above: the checks bite); the
  learned latent prior beats N(0, I)."""
  rng = np.random.default_rng(0)
  images = (255 * rng.integers(0, 2, (KNOWN_K, 8, 8, 1))).astype(np.uint8)
  assert len(np.unique(images.reshape(KNOWN_K, -1), axis=0)) == KNOWN_K
  data.register_arrays("known_entropy", np.tile(images, (128, 1, 1, 1)),
                       np.tile(images, (100, 1, 1, 1)), overwrite=True)
  common = {"data.name": "known_entropy", "model.image_shape": (8, 8, 1)}

  def run(workdir, steps, **overrides):
    c = tiny_config(**common, **overrides)
    c.training.update(batch_size=32, num_steps=steps, checkpoint_every=steps, eval_every=steps,
                      log_every=steps)
    c.optimizer.update(lr=3e-3, warmup_steps=20, ema_rate=0.99)
    training.train_and_evaluate(config_lib.resolve(c), workdir)
    final = [r for r in logging_utils.read_metrics(workdir) if "eval/bpd" in r][-1]
    assert final["eval/num_images"] == KNOWN_K * 100
    to_nats = 64 * math.log(2)       # bits per pixel dimension -> nats per image
    return final["eval/bpd"] * to_nats, final["eval/bpd_se"] * to_nats

  entropy = math.log(KNOWN_K)
  ae_bound, ae_se = run(tmp_path / "ae", 600, **{
      "model.network": "autoencoder", "model.schedule": "fixed_linear",
      "model.autoencoder": dict(latent_channels=2, ch=16, ch_mult=(1, 2), num_res_blocks=1,
                                kl_weight=1.0),
      "eval.batch_size": 400})
  assert entropy - 4 * ae_se <= ae_bound < entropy + 4.0, (ae_bound, ae_se, entropy)
  bound, se = run(tmp_path / "latent", 1500, **{
      "model.autoencoder_workdir": str(tmp_path / "ae"),
      "model.unet": dict(ch=16, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(),
                         dropout=0.0, with_fourier_features=False),
      "eval.batch_size": 400, "eval.num_time_samples": 32})
  assert entropy - 4 * se <= bound < entropy + 4.0, (bound, se, entropy)
  assert bound < ae_bound + 2 * math.hypot(se, ae_se), (bound, ae_bound)


def test_latent_config_checks_fail_before_compute(ae_dir, tmp_path):
  with pytest.raises(ValueError, match=r"autoencoder_workdir=.*nowhere has no config.json"):
    _latent_spec(tmp_path / "nowhere")
  diffusion_run = tmp_path / "diffusion"
  diffusion_run.mkdir()
  (diffusion_run / "config.json").write_text(config_lib.resolve(tiny_config()).to_json())
  with pytest.raises(ValueError, match=r"holds a run of network 'unet', not an autoencoder"):
    _latent_spec(diffusion_run)
  with pytest.raises(ValueError, match=r"takes the 8-bit pixels"):
    _latent_spec(ae_dir, **{"model.data": "continuous"})
  with pytest.raises(ValueError, match=r"needs a score network, not 'autoencoder'"):
    _latent_spec(ae_dir, **{"model.network": "autoencoder"})
  with pytest.raises(ValueError, match=r"config.model.unet does not fit the latents of shape "
                                       r"\(7, 7, 2\).*norm_groups"):
    _latent_spec(ae_dir, **{"model.unet": dict(ch=8, ch_mult=(1, 2), norm_groups=3)})
  with pytest.raises(ValueError, match=r"autoencoder_step must be a checkpoint step"):
    _latent_spec(ae_dir, **{"model.autoencoder_step": 0})


def test_the_ldm_config_stages_resolve(ae_dir):
  from experiments.configs import base, ldm_fashion_mnist
  assert "--config=experiments/configs/ldm_fashion_mnist.py:autoencoder" in ldm_fashion_mnist.__doc__
  reference = base.get_config()
  for stage in ldm_fashion_mnist.STAGES:
    config = ldm_fashion_mnist.get_config(stage)
    for group in reference:   # base.py plus overrides
      assert set(config[group]) == set(reference[group]), (stage, group)
    if stage != "autoencoder":
      config.data.name, config.model.autoencoder_workdir = DATASET, str(ae_dir)
    model = config_lib.resolve(config, num_devices=8, num_processes=1).model.build()
    assert type(model).__name__ == {"autoencoder": "AutoencoderModel", "latent": "LatentVDM",
                                    "latent_cond": "LatentVDM"}[stage]
  assert model.num_classes == 10 and model.network.label_conditioning == "cross_attention"
  with pytest.raises(ValueError, match="takes one of"):
    ldm_fashion_mnist.get_config("pixels")
