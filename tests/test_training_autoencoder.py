"""Stage 1 of latent diffusion through the training system: the autoencoder's objective, its
eval (bound, PSNR, KL per latent dimension), resume, and its config checks."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_train import assert_same_saved_states, straight_and_resumed, tiny_config
from vdm_jax import config as config_lib, data, logging_utils, parallel, training
from vdm_jax.training import modes, objectives

AUTOENCODER = {"model.network": "autoencoder",
               "model.autoencoder": dict(latent_channels=2, ch=8, ch_mult=(1, 2, 2),
                                         num_res_blocks=1, kl_weight=0.5),
               "eval.batch_size": 400}


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch):
  monkeypatch.delenv("VDM_DATA_DIR", raising=False)


def _spec(**overrides):
  return config_lib.resolve(tiny_config(**{**AUTOENCODER, **overrides}))


def test_the_loop_trains_an_autoencoder_and_its_eval_matches_a_hand_computation(tmp_path):
  spec = _spec(**{"training.num_steps": 2, "training.eval_every": 2})
  last = training.train_and_evaluate(spec, tmp_path)
  assert objectives.of(spec.model.build()) is objectives.AUTOENCODER
  records = logging_utils.read_metrics(tmp_path)
  assert [r["step"] for r in records if "train/bpd" in r] == [1, 2]
  assert not (tmp_path / "samples").exists()

  # The eval's figures from the restored EMA parameters, aggregated here independently: the
  # PSNR from the reconstructions' squared error, the KL per latent dimension in closed form.
  assert last["eval/latent_shape"] == "7x7x2" and last["eval/num_images"] == 400
  model, state, _ = training.restore_state(spec, tmp_path, mesh=parallel.make_mesh())
  images = data.load_arrays("fashion_mnist", "test")[0][:400]
  variables = {"params": jax.device_get(state.ema_params)}
  mean, log_std = jax.jit(functools.partial(model.apply, method=model.encode))(
      variables, jnp.asarray(images))
  recon = np.asarray(jax.jit(functools.partial(model.apply, method=model.decode))(
      variables, mean))
  mse = np.mean(np.square(recon.astype(np.float64) - images))
  np.testing.assert_allclose(last["eval/psnr"], 10 * np.log10(255 ** 2 / mse), rtol=1e-6)
  m, s = np.asarray(mean, np.float64), np.exp(np.asarray(log_std, np.float64))
  kl = np.mean(0.5 * (m ** 2 + s ** 2 - 1) - np.log(s))
  np.testing.assert_allclose(last["eval/kl_per_latent_dim"], kl, rtol=1e-4)
  # A bound on a probability of 8-bit pixels: positive bits, a standard error over 400 images.
  assert last["eval/bpd"] > 0 and 0 < last["eval/bpd_se"] < 0.1 * last["eval/bpd"]

  # --mode=eval of the run gives the loop's numbers (same key, same parameters).
  record = modes.evaluate_checkpoint(spec, tmp_path)
  np.testing.assert_allclose(record["eval/bpd"], last["eval/bpd"], rtol=1e-6)


# Three runs (straight, stopped, resumed): heavy tier. The default tier checks the autoencoder's
# compiled step on one and eight devices (tests/test_parallel.py) and its eval above.
@pytest.mark.heavy
def test_autoencoder_resume_is_bit_exact(tmp_path):
  spec4, straight, resumed, _ = straight_and_resumed(
      _spec, tmp_path, **{"training.checkpoint_every": 2, "training.eval_every": 4})
  assert_same_saved_states(straight, resumed, spec4, (2, 4))
  assert [r["step"] for r in logging_utils.read_metrics(resumed) if "train/bpd" in r] \
      == [1, 2, 3, 4]


def test_autoencoder_config_checks_fail_before_compute(tmp_path):
  with pytest.raises(ValueError, match=r"num_classes=10: the autoencoder is unconditional"):
    _spec(**{"model.num_classes": 10})
  with pytest.raises(ValueError, match=r"config.model.T=4 is a setting of the diffusion "
                                       r"objective; an autoencoder has none"):
    _spec(**{"model.T": 4})
  with pytest.raises(ValueError, match=r"downsampling factor 8"):
    _spec(**{"model.autoencoder": dict(ch_mult=(1, 2, 2, 2))})
  with pytest.raises(ValueError, match=r"config.model.autoencoder has no field width"):
    _spec(**{"model.autoencoder": dict(width=3)})
  with pytest.raises(ValueError, match=r"every_steps=5: a 'autoencoder' run is not sampled"):
    _spec(**{"sample_eval.every_steps": 5})
  with pytest.raises(ValueError, match=r"--mode=sample samples a diffusion model; this run "
                                       r"trains network 'autoencoder'"):
    modes.sample_checkpoint(_spec(), tmp_path)
  assert not tmp_path.joinpath("samples_step_0").exists()
