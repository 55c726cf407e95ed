"""Data parallelism: the mesh, batch sharding, and the same numbers on 1 and 8 devices."""

import jax
import numpy as np
import pytest

from helpers_train import tiny_config
from vdm_jax import config as config_lib
from vdm_jax import data, latent, likelihood, nets, parallel, training


def test_mesh_and_shard_batch():
  assert jax.device_count() == 8, "conftest forces 8 CPU devices"
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ("data",) and mesh.devices.size == 8
  batch = {"image": np.arange(16 * 3, dtype=np.uint8).reshape(16, 3),
           "label": np.arange(16, dtype=np.int32)}
  sharded = parallel.shard_batch(batch, mesh)
  np.testing.assert_array_equal(np.asarray(sharded["image"]), batch["image"])
  shards = sharded["label"].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (2,) for s in shards)
  # Stacked steps: axis 1 is the batch axis.
  stacked = parallel.shard_batch({"image": np.zeros((3, 16, 2), np.uint8)}, mesh, batch_dim=1)
  assert stacked["image"].shape == (3, 16, 2)
  assert {s.data.shape for s in stacked["image"].addressable_shards} == {(3, 2, 2)}
  assert parallel.per_process_batch(16, mesh) == 16


def test_batch_not_divisible_by_devices_says_what_to_change():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match=r"config.training.batch_size=12 is not divisible by the "
                     r"number of devices \(8\).*multiple of 8 \(e.g. --config.training."
                     r"batch_size=16\)"):
    parallel.check_batch_size(12, mesh.devices.size)
  parallel.check_batch_size(8, 1)
  parallel.check_batch_size(3, 1)
  with pytest.raises(ValueError, match=r"not divisible by the number of processes \(2\)"):
    parallel.check_batch_size(9, 1, 2)


def test_initialize_distributed_is_a_no_op_on_one_host(monkeypatch):
  for var in ("VDM_MULTIHOST", "JAX_COORDINATOR_ADDRESS"):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False


def _run(mesh, model, config, batches, steps_per_call, unroll=None):
  optimizer = training.make_optimizer(config.optimizer, 10)
  # The same initial state everywhere: initialised on all 8 devices, then placed on `mesh`.
  state = training.create_state(model, optimizer, 0, parallel.make_mesh())
  state = jax.device_put(state, parallel.replicated(mesh))
  step = training.compiled_train_step(model, optimizer, mesh, ema_rate=0.9, unroll=unroll)
  losses, lrs = [], []
  for i in range(0, len(batches["image"]), steps_per_call):
    chunk = {k: v[i:i + steps_per_call] for k, v in batches.items()}
    state, metrics = step(state, parallel.shard_batch(chunk, mesh, batch_dim=1))
    assert np.all(np.asarray(metrics["train/finite"]))
    losses.extend(np.asarray(metrics["train/loss"]).tolist())
    lrs.extend(np.asarray(metrics["train/lr"]).tolist())
  # The logged rate is the one each update used, read from the optimizer state.
  schedule = training.learning_rate_schedule(config.optimizer, 10)
  np.testing.assert_allclose(lrs, [float(schedule(i)) for i in range(len(lrs))], rtol=1e-6)
  return jax.device_get(state), np.asarray(losses)


@pytest.fixture(scope="module")
def setup():
  config = config_lib.resolve(tiny_config())
  model = config.model.build()
  it = data.get_dataset("fashion_mnist", "train", 8, seed=0)
  batches = [next(it) for _ in range(3)]
  stacked = {"image": np.stack([b["image"] for b in batches])}
  return config, model, stacked


@pytest.fixture(scope="module")
def eight_devices_one_step_per_call(setup):
  """(state, losses) of the reference run: every device, one step per call."""
  config, model, batches = setup
  return _run(parallel.make_mesh(), model, config, batches, 1)


def test_one_device_equals_eight_devices(setup, eight_devices_one_step_per_call):
  config, model, batches = setup
  mesh1 = parallel.make_mesh(jax.devices()[:1])
  mesh8 = parallel.make_mesh()
  s1, l1 = _run(mesh1, model, config, batches, 1)
  s8, l8 = eight_devices_one_step_per_call
  assert np.all(np.isfinite(l1)) and l1.shape == (3,)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  assert int(s1.step) == int(s8.step) == 3
  leaves = jax.tree_util.tree_leaves
  for a, b in zip(leaves(s1.params), leaves(s8.params)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  for a, b in zip(leaves(s1.ema_params), leaves(s8.ema_params)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
  # The parameters moved (the comparison is not trivially between initial states).
  optimizer = training.make_optimizer(config.optimizer, 10)
  init = training.create_state(model, optimizer, 0, mesh8)
  moved = max(float(np.max(np.abs(a - b))) for a, b in
              zip(jax.tree_util.tree_leaves(s8.params), jax.tree_util.tree_leaves(init.params)))
  assert moved > 1e-4


def _latent_diffusion_stages():
  """Stage 1 (an autoencoder on pixels) and stage 2 (a latent VDM on posterior moments of
  latents [7, 7, 2]) of latent diffusion, each with 3 batches of its inputs."""
  ae = config_lib.resolve(tiny_config(**{
      "model.network": "autoencoder",
      "model.autoencoder": dict(latent_channels=2, ch=8, ch_mult=(1, 2, 2), num_res_blocks=1,
                                kl_weight=0.5)})).model.build()
  it = data.get_dataset("fashion_mnist", "train", 8, seed=1)
  images = np.stack([next(it)["image"] for _ in range(3)])
  latent_vdm = latent.LatentVDM(
      network=nets.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(),
                        dropout=0.0, with_fourier_features=False),
      image_shape=(7, 7, 2), data=likelihood.Continuous(), schedule="learned_linear")
  rng = np.random.default_rng(0)
  moments = np.concatenate([rng.normal(size=(3, 8, 7, 7, 2)),
                            rng.normal(-1.0, 0.3, size=(3, 8, 7, 7, 2))], -1).astype(np.float32)
  return {"autoencoder": (ae, {"image": images}), "latent": (latent_vdm, {"image": moments})}


@pytest.mark.parametrize("stage", ["autoencoder", "latent"])
def test_latent_diffusion_stages_on_one_device_equal_eight_devices(setup, stage):
  config, _, _ = setup
  model, batches = _latent_diffusion_stages()[stage]
  s1, l1 = _run(parallel.make_mesh(jax.devices()[:1]), model, config, batches, 1)
  s8, l8 = _run(parallel.make_mesh(), model, config, batches, 1)
  assert np.all(np.isfinite(l1)) and l1.shape == (3,)
  np.testing.assert_allclose(l8, l1, rtol=1e-5)
  leaves = jax.tree_util.tree_leaves
  # Adam divides by the gradients' root mean square, so a parameter whose gradient is near 0
  # moves by what float32 reductions in another order change: 1e-5 absolute after 3 steps.
  for a, b in zip(leaves(s1.params), leaves(s8.params)):
    np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)
  # Three updates moved the parameters (not a comparison of initial states).
  init = training.create_state(model, training.make_optimizer(config.optimizer, 10), 0,
                               parallel.make_mesh())
  assert max(float(np.max(np.abs(a - b))) for a, b in
             zip(leaves(s8.params), leaves(jax.device_get(init.params)))) > 1e-4


@pytest.mark.heavy   # three compiled multi-step programs: ~70 s on 2 CPU cores
def test_steps_per_call_scan_and_unrolled_match_single_steps(setup,
                                                            eight_devices_one_step_per_call):
  config, model, batches = setup
  mesh8 = parallel.make_mesh()
  single, l_single = eight_devices_one_step_per_call
  scanned, l_scan = _run(mesh8, model, config, batches, 3, unroll=False)
  unrolled, l_unroll = _run(mesh8, model, config, batches, 3, unroll=True)
  np.testing.assert_allclose(l_scan, l_single, rtol=1e-5)
  np.testing.assert_allclose(l_unroll, l_single, rtol=1e-5)
  for s in (scanned, unrolled):
    for a, b in zip(jax.tree_util.tree_leaves(single.params), jax.tree_util.tree_leaves(s.params)):
      np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6)
