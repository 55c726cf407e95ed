"""Tests of the score networks (vdm_jax.nets): VDMScoreNet (paper) and UNet (DDPM-style).

Facts checked:
* Output shape == z's shape, dtype float32, for 28x28x1 and 32x32x3 inputs (Fourier features on).
* At initialisation the output is exactly what the zero-initialised output conv implies:
  VDMScoreNet (input_skip=True, the official "base measure") returns exactly z;
  UNet (input_skip=False) returns exactly 0. At that point only conv_out receives a gradient
  (every residual branch and the head end in a zero-initialised layer).
* With non-zero weights (init + Gaussian perturbation, standing in for trained weights) every
  parameter leaf, and every layer of the scanned stacks, receives a non-zero gradient when the
  batch contains every label 0..num_classes (the last being the null label). The only documented
  exception: an embedding row of a label absent from the batch gets exactly zero gradient
  (checked with the null row when the batch never uses the null label).
* Label conditioning, label=None (== null label), dropout only in train mode, bf16 compute,
  scan (stacked params, program size independent of depth), scan=False equivalence, remat.
* The official layout's options: cond_scalar_input, attn_key_bias and norm_groups add exactly
  dense0's zero-input row and the key biases; that row is a zero input (zero gradient); a key
  bias leaves attention unchanged; norm_groups fixes the group count or says what to change.

Keys are RBG keys (`jax.random.key(i, impl="rbg")`): the networks are PRNG-agnostic, and RBG
roughly halves the CPU compile time of `init` compared with threefry. Test functions are
compiled at XLA backend optimisation level 0 (`jit` below), which again halves the CPU compile
time of these tiny networks; the run time of the compiled code is irrelevant here.
"""
import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vdm_jax.nets import (AttnBlock, ConditioningEmbedding, GroupNorm, UNet, VDMScoreNet,
                          fourier_features, group_norm, num_groups, timestep_embedding,
                          unscanned_to_scanned)

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})

NUM_CLASSES = 3
B = 4  # batch with labels 0, 1, 2 and the null label 3.


def key(i):
  return jax.random.key(i, impl="rbg")


def keystr(path):
  return jax.tree_util.keystr(path)


def normal(seed, shape):
  return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def perturb(params, seed, scale=0.05):
  """params + scale * N(0, 1) on every leaf (numpy, so nothing to compile): makes the
  zero-initialised layers non-zero, standing in for trained weights."""
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map(
      lambda x: np.asarray(x) + scale * rng.standard_normal(x.shape).astype(np.float32), params)


def rel_err(a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.linalg.norm((a - b).ravel()) / np.linalg.norm(b.ravel()))


def nonzero_leaves(tree):
  """Paths of the leaves with at least one non-zero entry."""
  return {keystr(p) for p, x in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
          if np.any(x != 0)}


# Small networks; the VDM one runs on 28x28x1 and the UNet on 32x32x3 so that the main fixtures
# also cover the two image shapes.
VDM_KW = dict(n_embd=8, n_layer=2, with_fourier_features=True, with_attention=True, dropout=0.1,
              num_classes=NUM_CLASSES)
UNET_KW = dict(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,), dropout=0.1,
               num_classes=NUM_CLASSES, with_fourier_features=True)
NETS = {"vdm": (VDMScoreNet, VDM_KW, (28, 28, 1)), "unet": (UNet, UNET_KW, (32, 32, 3))}


class Setup:
  """A network, inputs, initial + perturbed params and jitted probe / grad functions."""

  def __init__(self, name):
    cls, kw, shape = NETS[name]
    self.name, self.cls, self.kw = name, cls, kw
    self.net = cls(**kw)
    self.z = normal(1, (B, *shape))
    self.cond = np.linspace(0.0, 1.0, B, dtype=np.float32)
    self.label = np.arange(B, dtype=np.int32)  # 0, 1, 2 and the null label 3
    self.target = normal(2, self.z.shape)
    self.params = jit(self.net.init)(key(0), self.z, self.cond, self.label)
    self.pert = perturb(self.params, 3)
    self.grad = jit(self.make_grad(self.net))
    self.apply = jit(self.net.apply)  # train=False

  def make_grad(self, net):
    def loss(p, label, dkey):
      out = net.apply(p, self.z, self.cond, label, train=True, rngs={"dropout": dkey})
      return jnp.mean((out - self.target) ** 2), out
    return jax.grad(loss, has_aux=True)

  def base(self):
    """What the output is at initialisation (z with input_skip, else 0)."""
    return self.z if self.net.input_skip else np.zeros_like(self.z)


_SETUPS = {}


def setup(name):
  if name not in _SETUPS:
    _SETUPS[name] = Setup(name)
  return _SETUPS[name]


# ---------------------------------------------------------------- helpers: closed forms


def test_timestep_embedding_closed_form():
  t = jnp.array([0.0, 0.25, 1.0])
  emb = timestep_embedding(t, 8)
  freqs = np.exp(-np.log(10000.0) * np.arange(4) / 3)
  args = 1000.0 * np.asarray(t)[:, None] * freqs[None]
  np.testing.assert_allclose(emb, np.concatenate([np.sin(args), np.cos(args)], 1), atol=1e-4)
  assert timestep_embedding(t, 9).shape == (3, 9)
  assert float(jnp.abs(timestep_embedding(t, 9)[:, -1]).max()) == 0.0


def test_fourier_features_closed_form():
  z = normal(0, (2, 3, 3, 2))
  f = fourier_features(z, (6, 7))
  assert f.shape == (2, 3, 3, 8) and f.dtype == jnp.float32
  zn = np.asarray(z, np.float64)
  expect_sin = np.stack([np.sin(2.0 ** e * 2 * np.pi * zn) for e in (6, 7)], -1).reshape(2, 3, 3, 4)
  expect_cos = np.stack([np.cos(2.0 ** e * 2 * np.pi * zn) for e in (6, 7)], -1).reshape(2, 3, 3, 4)
  np.testing.assert_allclose(f, np.concatenate([expect_sin, expect_cos], -1), atol=2e-4)


def test_num_groups():
  assert [num_groups(c) for c in (1, 2, 3, 8, 16, 32, 48, 64, 128, 256, 384)] == \
      [1, 1, 1, 4, 8, 16, 24, 32, 32, 32, 32]


@pytest.mark.parametrize("shape,groups", [((3, 5, 4, 8), 4), ((2, 6, 16), 8), ((2, 3, 3, 6), 1)])
def test_group_norm_is_flax_group_norm(shape, groups):
  """Same parameters, outputs and gradients as flax.linen.GroupNorm, also for inputs whose
  mean is far from 0 relative to their spread (where E[x^2] - E[x]^2 loses digits)."""
  x = 3.0 + 0.5 * normal(7, shape) + jnp.arange(shape[-1], dtype=jnp.float32)
  ours = GroupNorm(num_groups=groups, epsilon=1e-6)
  ref = nn.GroupNorm(num_groups=groups, epsilon=1e-6)
  params = ref.init(key(0), x)
  assert jax.tree_util.tree_structure(ours.init(key(0), x)) == jax.tree_util.tree_structure(params)
  params = jax.tree_util.tree_map(lambda p: p + 0.3 * normal(8, p.shape), params)
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), rtol=2e-4, atol=2e-4)
  # Exactly zero mean and unit variance per group before the affine part.
  unit = {"params": {"scale": jnp.ones(shape[-1]), "bias": jnp.zeros(shape[-1])}}
  y = np.asarray(ours.apply(unit, x), np.float64).reshape(shape[0], -1, groups,
                                                        shape[-1] // groups)
  np.testing.assert_allclose(y.mean(axis=(1, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.var(axis=(1, 3)), 1.0, atol=1e-3)
  loss = lambda m: (lambda p, x: jnp.sum(jnp.sin(m.apply(p, x))))
  g_ours = jax.grad(loss(ours), (0, 1))(params, x)
  g_ref = jax.grad(loss(ref), (0, 1))(params, x)
  for a, b in zip(jax.tree_util.tree_leaves(g_ours), jax.tree_util.tree_leaves(g_ref)):
    np.testing.assert_allclose(a, b, rtol=2e-3, atol=2e-3)
  with pytest.raises(ValueError, match="divisible"):
    GroupNorm(num_groups=5).init(key(0), x)


# ---------------------------------------------------------------- shapes and initial output


@pytest.mark.parametrize("name", ["vdm", "unet"])
def test_main_shape_and_exact_init_output(name):
  s = setup(name)
  out = s.apply(s.params, s.z, s.cond, s.label)
  assert out.shape == s.z.shape and out.dtype == jnp.float32
  np.testing.assert_array_equal(out, s.base())  # VDM: exactly z; UNet: exactly 0


@pytest.mark.parametrize("name,shape,extra", [
    ("vdm", (32, 32, 3), dict(with_attention=False, fourier_freqs=(5, 6, 7))),
    ("unet", (28, 28, 1), dict(ch_mult=(1, 2, 2), attn_resolutions=(7,))),
])
def test_other_shapes(name, shape, extra):
  """The swapped image shapes, traced abstractly (the numbers are covered by the main setups)."""
  cls, kw, _ = NETS[name]
  net = cls(**{**kw, "num_classes": 0, **extra})
  z = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
  cond = jax.ShapeDtypeStruct((2,), jnp.float32)
  params = jax.eval_shape(net.init, key(0), z, cond)
  for train in (False, True):
    out = jax.eval_shape(functools.partial(net.apply, train=train), params, z, cond,
                         rngs={"dropout": key(1)})
    assert out.shape == z.shape and out.dtype == jnp.float32
  if name == "vdm":  # 1 + 2 * 3 freqs Fourier channels per input channel
    assert params["params"]["conv_in"]["kernel"].shape == (3, 3, 3 * 7, 8)
  else:  # 28 -> 14 -> 7: attention only at 7x7 (plus the middle)
    attn = sorted(k for k in params["params"] if "attn" in k)
    assert attn == ["down2_attn0", "mid_attn", "up2_attn0", "up2_attn1"]


def test_paper_configurations_by_attributes():
  """VDMScoreNet() is the paper's CIFAR-10 network; UNet() is DDPM's CIFAR-10 network."""
  z = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  vdm = VDMScoreNet()
  assert (vdm.n_embd, vdm.n_layer, vdm.with_fourier_features, vdm.with_attention, vdm.dropout) \
      == (128, 32, True, False, 0.1)
  p = jax.eval_shape(vdm.init, key(0), z, c)["params"]
  assert p["conv_in"]["kernel"].shape == (3, 3, 3 * 5, 128)  # z + sin/cos at 2 freqs
  assert p["down"]["block"]["conv1"]["kernel"].shape == (32, 3, 3, 128, 128)
  assert p["up"]["block"]["conv1"]["kernel"].shape == (33, 3, 3, 256, 128)
  assert "attn" not in p["down"] and "mid_attn" in p
  assert sum(x.size for x in jax.tree_util.tree_leaves(p)) == 30_577_539
  p = jax.eval_shape(UNet().init, key(0), z, c)["params"]
  assert sum(x.size for x in jax.tree_util.tree_leaves(p)) == 35_739_779  # DDPM reports 35.7M


def test_unconditional_rejects_label():
  net = UNet(**{**UNET_KW, "num_classes": 0})
  z, c = np.zeros((2, 8, 8, 3), np.float32), np.zeros((2,), np.float32)
  with pytest.raises(ValueError, match="unconditional"):
    jax.eval_shape(net.init, key(0), z, c, np.zeros((2,), np.int32))
  with pytest.raises(ValueError, match="cond"):
    jax.eval_shape(net.init, key(0), z, np.zeros((3,), np.float32))


# ---------------------------------------------------------------- the official layout's options


def _count(tree):
  return sum(x.size for x in jax.tree_util.tree_leaves(tree))


@pytest.mark.parametrize("name,kw,extra", [
    # dense0's extra row (4 * 32) + a key bias in 2 down, 1 middle, 3 up attention blocks (32 ch)
    ("vdm", dict(n_embd=32, n_layer=2, with_attention=True), 4 * 32 + 6 * 32),
    # dense0's extra row (4 * 32) + key biases at 16x16: 1 down, 1 middle, 2 up blocks (64 ch)
    ("unet", dict(ch=32, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(16,)),
     4 * 32 + 4 * 64),
])
def test_official_layout_options_add_only_their_parameters(name, kw, extra):
  """cond_scalar_input, attn_key_bias and norm_groups (the official VDM layout) add dense0's
  extra input row and the key biases, nothing else; the defaults keep the tree as it was."""
  cls = NETS[name][0]
  z = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  plain = jax.eval_shape(cls(**kw).init, key(0), z, c)["params"]
  official = jax.eval_shape(cls(**kw, cond_scalar_input=True, attn_key_bias=True,
                                norm_groups=32).init, key(0), z, c)["params"]
  assert _count(official) - _count(plain) == extra
  assert plain["cond_embed"]["dense0"]["kernel"].shape == (32, 128)
  assert official["cond_embed"]["dense0"]["kernel"].shape == (33, 128)
  assert "bias" not in plain["mid_attn"]["k"] and official["mid_attn"]["k"]["bias"].shape[-1] > 0
  paths = lambda t: {keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(t)}
  assert paths(official) - paths(plain) == {
      p for p in paths(official) if p.endswith("['k']['bias']")}


def test_cond_scalar_input_is_a_zero_input():
  """The extra dense0 input is 0: the embedding is the default one with that kernel row left
  out, and the row gets exactly zero gradient."""
  cond = np.array([0.0, 0.3, 1.0], np.float32)
  extra = ConditioningEmbedding(16, cond_scalar_input=True)
  params = perturb(jit(extra.init)(key(0), cond), 1)
  plain_params = jax.tree_util.tree_map(lambda x: x, params)
  plain_params["params"]["dense0"]["kernel"] = params["params"]["dense0"]["kernel"][:-1]
  np.testing.assert_allclose(jit(extra.apply)(params, cond),
                             jit(ConditioningEmbedding(16).apply)(plain_params, cond), rtol=1e-6,
                             atol=1e-6)
  grad = jit(jax.grad(lambda p: jnp.sum(extra.apply(p, cond) ** 2)))(params)
  kernel_grad = np.asarray(grad["params"]["dense0"]["kernel"])
  assert np.all(kernel_grad[-1] == 0.0) and np.abs(kernel_grad[:-1]).max() > 0


def test_attention_key_bias_leaves_the_function_unchanged():
  """A key bias adds q.b_k to every logit of a query, which the softmax removes."""
  x = normal(0, (2, 4, 4, 8))
  with_bias = AttnBlock(key_bias=True)
  params = perturb(jit(with_bias.init)(key(0), x), 1, scale=0.5)
  assert np.abs(params["params"]["k"]["bias"]).max() > 0.1
  plain = {"params": {**params["params"], "k": {"kernel": params["params"]["k"]["kernel"]}}}
  np.testing.assert_allclose(jit(with_bias.apply)(params, x), jit(AttnBlock().apply)(plain, x),
                             rtol=1e-5, atol=1e-5)


def test_norm_groups_fixes_the_group_count():
  assert group_norm(32, "n").num_groups == 16 and group_norm(32, "n", groups=32).num_groups == 32
  z, c = np.zeros((2, 8, 8, 1), np.float32), np.zeros((2,), np.float32)
  with pytest.raises(ValueError, match=r"norm_groups must be 0 \(automatic\) or divide "
                     r"n_embd=32, got 48"):
    jax.eval_shape(VDMScoreNet(n_embd=32, n_layer=1, norm_groups=48).init, key(0), z, c)
  with pytest.raises(ValueError, match=r"norm_groups must be 0 \(automatic\) or divide every "
                     r"level's channels \[8, 16\], got 16"):
    jax.eval_shape(UNet(ch=8, ch_mult=(1, 2), norm_groups=16).init, key(0), z, c)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("name", ["vdm", "unet"])
def test_gradients_reach_every_parameter(name):
  s = setup(name)
  # At initialisation only the output conv gets a gradient: everything upstream of it feeds
  # a zero kernel (the residual branches end in zero-initialised layers too).
  g0, out0 = s.grad(s.params, s.label, key(5))
  np.testing.assert_array_equal(out0, s.base())
  assert nonzero_leaves(g0) == {"['params']['conv_out']['bias']", "['params']['conv_out']['kernel']"}

  # With non-zero weights every leaf gets a gradient; for scanned stacks every layer does.
  g, _ = s.grad(s.pert, s.label, key(5))
  for path, leaf in jax.tree_util.tree_leaves_with_path(jax.device_get(g)):
    p = keystr(path)
    assert np.all(np.isfinite(leaf)), p
    if p.startswith("['params']['down']") or p.startswith("['params']['up']"):
      per_layer = np.max(np.abs(leaf).reshape(leaf.shape[0], -1), axis=1)
      assert np.all(per_layer > 0), p
    else:
      assert np.max(np.abs(leaf)) > 0, p

  # Documented exception: rows of labels absent from the batch get exactly zero gradient.
  g, _ = s.grad(s.pert, np.array([0, 1, 2, 0], np.int32), key(5))
  emb = np.asarray(g["params"]["cond_embed"]["label_embed"]["embedding"])
  row_norms = np.abs(emb).sum(axis=1)
  assert np.all(row_norms[:NUM_CLASSES] > 0) and row_norms[NUM_CLASSES] == 0.0


def test_adam_steps_unlock_all_gradients():
  """From the true initialisation, an optimizer reaches every parameter in a few steps (the
  depth of zero-initialised layers on a path: conv_out, then conv2/proj_out, then the rest)."""
  s = setup("unet")
  opt = optax.adam(1e-2)

  @jit
  def update(g, st, p):
    upd, st = opt.update(g, st, p)
    return optax.apply_updates(p, upd), st
  p, st = s.params, jit(opt.init)(s.params)
  for i in range(3):
    g, _ = s.grad(p, s.label, key(10 + i))
    p, st = update(g, st, p)
  g, _ = s.grad(p, s.label, key(20))
  all_leaves = {keystr(q) for q, _ in jax.tree_util.tree_leaves_with_path(g)}
  assert nonzero_leaves(g) == all_leaves


# ---------------------------------------------------------------- conditioning and dropout


@pytest.mark.parametrize("name", ["vdm", "unet"])
def test_label_and_dropout_behaviour(name):
  s = setup(name)
  ev = lambda lab, k: np.asarray(s.apply(s.pert, s.z, s.cond, lab, rngs={"dropout": k}))
  tr = lambda k: np.asarray(s.grad(s.pert, s.label, k)[1])  # train=True forward (already compiled)
  o = dict(
      eval_k1=ev(s.label, key(6)), eval_k2=ev(s.label, key(7)),
      train_k1=tr(key(6)), train_k1_again=tr(key(6)), train_k2=tr(key(7)),
      label_none=ev(None, key(6)),
      label_null=ev(np.full_like(s.label, NUM_CLASSES), key(6)),
      label_shift=ev((s.label + 1) % NUM_CLASSES, key(6)))
  maxdiff = lambda a, b: float(np.max(np.abs(o[a] - o[b])))
  # Dropout only in train mode; deterministic given the key.
  assert maxdiff("eval_k1", "eval_k2") == 0.0
  assert maxdiff("train_k1", "train_k1_again") == 0.0
  assert maxdiff("train_k1", "train_k2") > 1e-3
  assert maxdiff("eval_k1", "train_k1") > 1e-3
  # label=None is the null label; another label changes the output.
  assert maxdiff("label_none", "label_null") == 0.0
  assert maxdiff("eval_k1", "label_shift") > 1e-3
  assert maxdiff("eval_k1", "label_null") > 1e-3


# ---------------------------------------------------------------- bf16


@pytest.mark.parametrize("name", ["vdm", "unet"])
def test_bf16_compute(name):
  """bf16 compute, float32 params and output. Relative error of the learned part of the output
  (eps_hat - z for the VDM net) against float32: ~1e-2 observed; asserted < 5e-2."""
  s = setup(name)
  net16 = s.net.clone(dtype=jnp.bfloat16)
  out16 = jit(lambda p: net16.apply(p, s.z, s.cond, s.label))(s.pert)
  out32 = s.apply(s.pert, s.z, s.cond, s.label)
  assert out16.dtype == jnp.float32 and out16.shape == s.z.shape
  assert jax.tree_util.tree_leaves(jax.tree_util.tree_map(lambda x: x.dtype, s.params)) == \
      [jnp.float32] * len(jax.tree_util.tree_leaves(s.params))
  err = rel_err(out16 - s.base(), out32 - s.base())
  assert 0 < err < 5e-2, err


# ---------------------------------------------------------------- scan, remat


def _lowered_lines(n_layer):
  net = VDMScoreNet(**{**VDM_KW, "n_layer": n_layer})
  z = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((2,), jnp.float32)
  lab = jax.ShapeDtypeStruct((2,), jnp.int32)
  shapes = jax.eval_shape(net.init, key(0), z, c, lab)

  def loss(p, z, c, lab):
    out = net.apply(p, z, c, lab, train=True, rngs={"dropout": key(1)})
    return jnp.mean(out ** 2)
  text = jit(jax.grad(loss)).lower(shapes, z, c, lab).as_text()
  return shapes, len(text.splitlines())


def test_scan_stacks_params_and_program_size_is_flat():
  shapes2, lines2 = _lowered_lines(2)
  shapes8, lines8 = _lowered_lines(8)
  for shapes, n in ((shapes2, 2), (shapes8, 8)):
    p = shapes["params"]
    assert {x.shape[0] for x in jax.tree_util.tree_leaves(p["down"])} == {n}
    assert {x.shape[0] for x in jax.tree_util.tree_leaves(p["up"])} == {n + 1}
    assert p["down"]["block"]["conv1"]["kernel"].shape == (n, 3, 3, 8, 8)
    assert p["up"]["block"]["conv1"]["kernel"].shape == (n + 1, 3, 3, 16, 8)
  # The grad program of n_layer=8 is the same size as n_layer=2 (up to constants).
  assert abs(lines8 - lines2) < 0.1 * lines2, (lines2, lines8)


def test_scan_matches_unrolled():
  """scan=False computes the same function; unscanned_to_scanned maps its params exactly."""
  s = setup("vdm")
  n = VDM_KW["n_layer"]
  net = VDMScoreNet(**{**VDM_KW, "scan": False})
  p = dict(s.pert["params"])
  down, up = p.pop("down"), p.pop("up")
  p.update({f"down_{i}": jax.tree_util.tree_map(lambda x: x[i], down) for i in range(n)})
  p.update({f"up_{i}": jax.tree_util.tree_map(lambda x: x[i], up) for i in range(n + 1)})
  unrolled = {"params": p}
  expected = jax.eval_shape(net.init, key(0), s.z, s.cond, s.label)
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: x.shape, tree)
  assert shapes(unrolled) == shapes(expected)
  restacked = unscanned_to_scanned(unrolled, n)
  jax.tree_util.tree_map(np.testing.assert_array_equal, restacked, s.pert)
  np.testing.assert_allclose(jit(net.apply)(unrolled, s.z, s.cond, s.label),
                             s.apply(s.pert, s.z, s.cond, s.label), rtol=1e-5, atol=1e-5)


def test_scan_unroll_is_the_same_function_with_the_same_parameters():
  s = setup("vdm")
  unrolled = VDMScoreNet(**{**VDM_KW, "scan_unroll": 2})
  shapes = lambda tree: jax.tree_util.tree_map(lambda x: x.shape, tree)
  assert shapes(jax.eval_shape(unrolled.init, key(0), s.z, s.cond, s.label)) == shapes(s.pert)
  np.testing.assert_allclose(jit(unrolled.apply)(s.pert, s.z, s.cond, s.label),
                             s.apply(s.pert, s.z, s.cond, s.label), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match=r"scan_unroll must be >= 1 \(blocks per loop iteration\), "
                     r"got 0"):
    VDMScoreNet(**{**VDM_KW, "scan_unroll": 0}).init(key(0), s.z, s.cond, s.label)


@pytest.mark.parametrize("name", ["vdm", "unet"])
def test_remat_same_output_and_gradients(name):
  s = setup(name)
  g_remat = jit(s.make_grad(s.net.clone(remat=True)))
  ga, outa = s.grad(s.pert, s.label, key(9))
  gb, outb = g_remat(s.pert, s.label, key(9))  # same dropout key: same masks
  np.testing.assert_allclose(outa, outb, rtol=1e-5, atol=1e-6)
  for a, b in zip(jax.tree_util.tree_leaves(ga), jax.tree_util.tree_leaves(gb)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------- measurements (not tests)


def measure_compile_times(n_layers=(4, 32), n_embd=32, shape=(2, 32, 32, 3)):
  """Compile seconds of jit(grad(MSE)) through VDMScoreNet for several depths.

  Run with `python tests/test_nets.py`; prints one line per depth.
  """
  results = {}
  for n in n_layers:
    net = VDMScoreNet(n_embd=n_embd, n_layer=n, with_fourier_features=True, dropout=0.1)
    z, c = jnp.zeros(shape), jnp.full((shape[0],), 0.5)
    params = jax.jit(net.init)(jax.random.key(0), z, c)

    def loss(p):
      out = net.apply(p, z, c, train=True, rngs={"dropout": jax.random.key(1)})
      return jnp.mean(out ** 2)
    t0 = time.perf_counter()
    lowered = jax.jit(jax.grad(loss)).lower(params)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    results[n] = dict(lower_s=t1 - t0, compile_s=t2 - t1)
    print(f"n_layer={n}: lower {t1 - t0:.2f} s, compile {t2 - t1:.2f} s", flush=True)
  return results


def measure_unet_step(batch=64, shape=(28, 28, 1), steps=10, **kw):
  """Steady-state seconds per jit(grad(MSE)) step of a small UNet (default: ch=32,
  ch_mult=(1, 2, 2), num_res_blocks=1, on 28x28x1 with batch 64)."""
  kw = {**dict(ch=32, ch_mult=(1, 2, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.1), **kw}
  net = UNet(**kw)
  z = jax.random.normal(jax.random.key(0), (batch, *shape))
  c = jax.random.uniform(jax.random.key(1), (batch,))
  params = jax.jit(net.init)(jax.random.key(0), z, c)

  @jax.jit
  def grad(p, k):
    return jax.grad(lambda p: jnp.mean(
        (net.apply(p, z, c, train=True, rngs={"dropout": k}) - z) ** 2))(p)
  t0 = time.perf_counter()
  jax.block_until_ready(grad(params, jax.random.key(2)))
  compile_s = time.perf_counter() - t0
  t0 = time.perf_counter()
  for i in range(steps):
    g = grad(params, jax.random.key(3 + i))
  jax.block_until_ready(g)
  step_s = (time.perf_counter() - t0) / steps
  n_params = sum(x.size for x in jax.tree_util.tree_leaves(params))
  print(f"UNet {kw} on {batch}x{shape}: {n_params} params, first call {compile_s:.1f} s, "
        f"{step_s * 1000:.0f} ms/step", flush=True)
  return dict(compile_s=compile_s, step_s=step_s, n_params=n_params)


if __name__ == "__main__":
  measure_compile_times()
  measure_unet_step()
  measure_unet_step(attn_resolutions=(7,))
