"""The evaluator against the closed-form model: its bpd is the data entropy.

Data: three 2x2x1 images with 16 levels and probabilities (0.5, 0.3, 0.2). With the optimal
denoiser (`point_masses.optimal_eps_fn`) in continuous time the expected negative ELBO is

    H(x) + KL(q(z_1) || N(0, I)) + (E[recon] - H(x | z_0))

(the diffusion term is I(x; z_0) - I(x; z_1)). Both extra terms are >= 0 and bounded by the
reported E[prior] and E[recon] (KL of the marginal <= expected KL of the conditionals;
H(x | z_0) >= 0). So, with the reported standard error se,

    H_bpd - 4 se  <=  bpd  <=  H_bpd + prior_bpd + recon_bpd + 4 se.

Here prior_bpd ~ 2.3e-3 (gamma_max = 5) and recon_bpd ~ 0 (bins are ~48 sigma_0 wide).
Padding rows are zero images (not a data point): counting them would move bpd by far more than se.
"""
import math
from typing import Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from vdm_jax import evaluation, likelihood, losses, point_masses
from vdm_jax import model as vdm_model
from vdm_jax import nets

V = 16
SHAPE = (2, 2, 1)
POINTS = ((0, 3, 7, 12), (15, 15, 0, 0), (5, 10, 5, 10))
PROBS = (0.5, 0.3, 0.2)
ENTROPY_NATS = -sum(p * math.log(p) for p in PROBS)
ENTROPY_BPD = ENTROPY_NATS / (math.prod(SHAPE) * math.log(2))


class PointMassVDM(nn.Module):
  """The VDM interface (eps, gamma, __call__ -> VDMLoss) with the closed-form optimal denoiser."""
  points: Tuple[Tuple[int, ...], ...] = POINTS
  probs: Tuple[float, ...] = PROBS
  image_shape: Tuple[int, ...] = SHAPE
  vocab_size: int = V
  gamma_min: float = -13.3
  gamma_max: float = 5.0
  T: int = 0
  antithetic: bool = True
  num_classes: int = 0

  def gamma(self, t):
    return self.gamma_min + (self.gamma_max - self.gamma_min) * jnp.asarray(t, jnp.float32)

  def eps(self, z, gamma_t, labels=None, *, train=False):
    pts = jnp.array(self.points, jnp.int32).reshape((-1, *self.image_shape))
    log_probs = jnp.log(jnp.array(self.probs, jnp.float32))
    return point_masses.optimal_eps_fn(likelihood.encode(pts, self.vocab_size), log_probs)(
        z, gamma_t)

  def __call__(self, images, labels=None, *, train=False):
    return losses.vdm_loss(self.eps, self.gamma, images, self.make_rng("sample"),
                           vocab_size=self.vocab_size, T=self.T, antithetic=self.antithetic)


def point_batches(num_images, batch_size, seed=0):
  """Eval batches as from data.get_dataset(..., 'test'): last batch padded with zero rows."""
  rng = np.random.default_rng(seed)
  pts = np.array(POINTS, np.uint8).reshape((-1, *SHAPE))
  images = pts[rng.choice(len(POINTS), size=num_images, p=PROBS)]
  for start in range(0, num_images, batch_size):
    rows = np.arange(start, start + batch_size)
    mask = rows < num_images
    image = np.zeros((batch_size, *SHAPE), np.uint8)
    image[mask] = images[rows[mask]]
    yield {"image": image, "label": np.zeros((batch_size,), np.int32), "mask": mask}


def test_bpd_equals_data_entropy_within_se():
  model = PointMassVDM()
  n = 4000                      # 7 full batches of 512 and one with 416 real rows
  res = evaluation.evaluate(model, {}, point_batches(n, 512), jax.random.PRNGKey(0),
                            num_time_samples=16, diffusion_t_bins=4)
  assert res["num_images"] == n
  assert res["num_time_samples"] == 16 and res["T"] == 0
  se = res["bpd_se"]
  assert 0 < se < 0.015, se     # measured 0.008 (the integrand is heavy-tailed for point masses)
  bias_bound = res["prior_bpd"] + res["recon_bpd"]
  assert bias_bound < 3e-3, res
  assert ENTROPY_BPD - 4 * se <= res["bpd"] <= ENTROPY_BPD + bias_bound + 4 * se, (res,
                                                                                    ENTROPY_BPD)
  np.testing.assert_allclose(res["recon_bpd"] + res["prior_bpd"] + res["diffusion_bpd"],
                             res["bpd"], rtol=1e-12)
  share = np.array(res["diffusion_share"])
  assert share.shape == (4,) and np.all(share >= 0)
  np.testing.assert_allclose(share.sum(), 1.0, rtol=1e-12)
  # The binned contributions are an independent estimate of the diffusion term.
  assert abs(sum(res["diffusion_bin_bpd"]) - res["diffusion_bpd"]) < 6 * se


def test_padding_ignored_and_each_image_counted_once():
  model = PointMassVDM()
  key = jax.random.PRNGKey(3)
  # 70 images in batches of 32: 32 + 32 + 6 real (26 zero padding rows).
  res = evaluation.evaluate(model, {}, point_batches(70, 32, seed=1), key)
  assert res["num_images"] == 70
  # Same result when the padding rows hold other content: they are masked out.
  def garbage_padding(batches):
    for b in batches:
      b = dict(b)
      b["image"] = np.where(b["mask"][:, None, None, None], b["image"], 7).astype(np.uint8)
      yield b
  res2 = evaluation.evaluate(model, {}, garbage_padding(point_batches(70, 32, seed=1)), key)
  assert res2 == res
  # Without the mask the padding rows would count (and the zero image is no data point).
  def unmasked(batches):
    for b in batches:
      yield {k: v for k, v in b.items() if k != "mask"}
  res3 = evaluation.evaluate(model, {}, unmasked(point_batches(70, 32, seed=1)), key)
  assert res3["num_images"] == 96
  assert res3["bpd"] > res["bpd"] + 1.0


def test_discrete_time_bound_is_above_continuous():
  model = PointMassVDM()
  batches = list(point_batches(1000, 250, seed=2))
  cont = evaluation.evaluate(model, {}, batches, jax.random.PRNGKey(1), num_time_samples=4)
  disc = evaluation.evaluate(model, {}, batches, jax.random.PRNGKey(2), T=5,
                             num_time_samples=4)
  assert disc["T"] == 5
  assert disc["bpd"] - cont["bpd"] > 4 * math.hypot(disc["bpd_se"], cont["bpd_se"]), (disc, cont)


def test_per_example_loss_shapes_and_averaging():
  model = PointMassVDM()
  images = jnp.array(POINTS, jnp.int32).reshape((-1, *SHAPE))
  key = jax.random.PRNGKey(0)    # threefry: vmapped draws equal the unbatched ones (not RBG)
  loss = jax.jit(lambda k: evaluation.per_example_loss(model, {}, images, None, k,
                                                       num_time_samples=3))(key)
  assert isinstance(loss, losses.VDMLoss)
  for term in loss:
    assert term.shape == (3,) and term.dtype == jnp.float32
  # Equals the mean of the three single draws from the same split keys.
  one = jax.jit(lambda k: model.apply({}, images, rngs={"sample": k}))
  draws = [one(k) for k in jax.random.split(key, 3)]
  np.testing.assert_allclose(loss.diffusion, np.mean([d.diffusion for d in draws], 0),
                             rtol=1e-5)
  with pytest.raises(ValueError, match="num_time_samples"):
    evaluation.per_example_loss(model, {}, images, None, key, num_time_samples=0)


def test_put_batch_called_and_compiled_once():
  model = PointMassVDM(gamma_max=6.0)    # a model no other test compiled
  calls = []

  def put(batch):
    calls.append(batch["image"].shape)
    return {k: jnp.asarray(v) for k, v in batch.items()}

  before = evaluation._eval_batch._cache_size()
  res = evaluation.evaluate(model, {}, point_batches(50, 16), jax.random.PRNGKey(0),
                            put_batch=put)
  assert len(calls) == 4 and res["num_images"] == 50
  assert evaluation._eval_batch._cache_size() == before + 1
  evaluation.evaluate(model, {}, point_batches(50, 16), jax.random.PRNGKey(1), put_batch=put)
  assert evaluation._eval_batch._cache_size() == before + 1
  with pytest.raises(ValueError, match="no real images"):
    evaluation.evaluate(model, {}, iter(()), jax.random.PRNGKey(0))


def test_sharded_batches_give_the_same_result():
  devices = np.array(jax.devices())
  mesh = Mesh(devices, ("data",))
  sharding = NamedSharding(mesh, P("data"))

  def shard(batch):
    return {k: jax.device_put(v, sharding) for k, v in batch.items()}

  model = PointMassVDM()
  bs = 2 * len(devices)
  ref = evaluation.evaluate(model, {}, point_batches(40, bs), jax.random.PRNGKey(0))
  res = evaluation.evaluate(model, {}, point_batches(40, bs), jax.random.PRNGKey(0),
                            put_batch=shard)
  assert res["num_images"] == ref["num_images"] == 40
  for k in ("bpd", "recon_bpd", "prior_bpd", "diffusion_bpd"):
    np.testing.assert_allclose(res[k], ref[k], rtol=1e-5, err_msg=k)


def test_real_tiny_vdm_padded_pass():
  net = nets.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                  num_classes=2)
  model = vdm_model.VDM(network=net, image_shape=(4, 4, 1), vocab_size=256, num_classes=2)
  # RBG keys: a fraction of threefry's CPU compile time for the network's init.
  variables = jax.jit(lambda k: vdm_model.init_variables(model, k))(jax.random.key(0, impl="rbg"))
  rng = np.random.default_rng(0)

  def batches():
    n, bs = 11, 4
    for start in range(0, n, bs):
      mask = np.arange(start, start + bs) < n
      image = rng.integers(0, 256, (bs, 4, 4, 1)).astype(np.uint8)
      image[~mask] = 0
      yield {"image": image, "label": rng.integers(0, 2, (bs,)).astype(np.int32), "mask": mask}

  res = evaluation.evaluate(model, variables, batches(), jax.random.key(1, impl="rbg"),
                            num_time_samples=2, diffusion_t_bins=2)
  assert res["num_images"] == 11
  for k in ("bpd", "bpd_se", "recon_bpd", "prior_bpd", "diffusion_bpd"):
    assert np.isfinite(res[k]), res
  np.testing.assert_allclose(res["recon_bpd"] + res["prior_bpd"] + res["diffusion_bpd"],
                             res["bpd"], rtol=1e-12)
  assert len(res["diffusion_share"]) == 2
  np.testing.assert_allclose(sum(res["diffusion_share"]), 1.0, rtol=1e-12)
  # An untrained model on uniform noise: around 8 bits per dim (the uniform entropy) or more.
  assert res["bpd"] > 7.0


def test_ode_bound_computes_with_the_fast_conv_gradient():
  """The ODE bound switches a U-Net's `fast_conv_grad` on (its vector-Jacobian products run
  inside the solver's loop): the same network function and, to float rounding, its gradient."""
  net = nets.UNet(ch=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), dropout=0.0)
  model = vdm_model.VDM(network=net, image_shape=(4, 4, 1), vocab_size=256)
  fast = evaluation._with_fast_conv_grad(model)
  assert fast.network.fast_conv_grad and not model.network.fast_conv_grad
  assert evaluation._with_fast_conv_grad(fast) is fast
  variables = jax.jit(lambda k: vdm_model.init_variables(model, k))(jax.random.key(0, impl="rbg"))
  variables = jax.tree_util.tree_map(   # away from the zero-initialised output layer
      lambda p: p + 0.05 * jax.random.normal(jax.random.key(1), p.shape, p.dtype), variables)
  z = jax.random.normal(jax.random.key(2), (3, 4, 4, 1))
  g = jnp.asarray([-10.0, -2.0, 4.0])
  v = jax.random.rademacher(jax.random.key(3), z.shape, jnp.float32)

  def eps_and_vjp(m):
    eps, vjp = jax.vjp(lambda z_: m.apply(variables, z_, g, None, method=m.eps), z)
    return eps, vjp(v)[0]

  (eps_slow, vjp_slow), (eps_fast, vjp_fast) = jax.jit(eps_and_vjp, static_argnums=0)(model), \
      jax.jit(eps_and_vjp, static_argnums=0)(fast)
  np.testing.assert_array_equal(eps_fast, eps_slow)
  assert float(jnp.max(jnp.abs(vjp_slow))) > 1e-2
  np.testing.assert_allclose(vjp_fast, vjp_slow, rtol=1e-4, atol=1e-6)
