"""The official VDM code's weights and checkpoints (vdm_jax.interop.official).

The official layout is written out here independently of the module under test: a parameter
tree builder (`official_tree`) and a float64 numpy forward pass of the official score network
and schedules (`np_official_eps`, `np_official_gamma`), both from the official model_vdm.py's
layer names, shapes and operations. Facts checked:
* Parameter counts: the closed form below gives 30,578,181 for the paper's CIFAR-10 model, as
  the official code reports; `official_param_count` and the official-layout VDMScoreNet agree.
* For each gamma_type, 1 and 3 channels, attention on and off, random non-zero weights: every
  converted leaf is the official leaf it must be (layer by layer, stack entry by stack entry),
  counts are equal, and eps(z, gamma_t) and gamma(t) equal the numpy official forward pass to
  relative error < 1e-4 (also the network's part eps - z alone).
* A ResnetBlock and an AttnBlock with the mapped kernels equal the same blocks computed by hand.
* load_checkpoint reads a msgpack train state written here (file or folder, clu's naming, EMA or
  raw parameters); a truncated or foreign file is a clear error naming the file.
* The CLI evaluates (bpd, its standard error, the three terms) and samples such a checkpoint.
"""
import functools
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers_train import tiny_config, write_config_file
from vdm_jax import nets
from vdm_jax.interop import official

REPO = Path(__file__).resolve().parents[1]

jit = functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0})


def config(**overrides):
  c = dict(vocab_size=256, sample_softmax=False, antithetic_time_sampling=True,
           with_fourier_features=True, with_attention=False, gamma_type="learnable_scalar",
           gamma_min=-13.3, gamma_max=5.0, sm_n_timesteps=0, sm_n_embd=32, sm_n_layer=2,
           sm_pdrop=0.1)
  c.update(overrides)
  return c


# The official configs/cifar10.py model group.
PAPER = config(sm_n_embd=128, sm_n_layer=32)


# ------------------------------------------------------------------ the official layout


def official_tree(c, channels, leaf):
  """The official VDM module's 'params': leaf(shape, kind) makes each array (kind: 'kernel',
  'bias', 'scale')."""
  n, n_layer = c["sm_n_embd"], c["sm_n_layer"]

  def dense(n_in, n_out, bias=True):
    d = {"kernel": leaf((n_in, n_out), "kernel")}
    if bias:
      d["bias"] = leaf((n_out,), "bias")
    return d

  def conv(n_in, n_out):
    return {"kernel": leaf((3, 3, n_in, n_out), "kernel"), "bias": leaf((n_out,), "bias")}

  def norm(ch):
    return {"scale": leaf((ch,), "scale"), "bias": leaf((ch,), "bias")}

  def resnet(n_in):
    d = {"GroupNorm_0": norm(n_in), "conv1": conv(n_in, n), "cond_proj": dense(4 * n, n, False),
         "GroupNorm_1": norm(n), "conv2": conv(n, n)}
    if n_in != n:
      d["nin_shortcut"] = dense(n_in, n)
    return d

  def attn():
    return {"GroupNorm_0": norm(n), **{k: dense(n, n) for k in ("q", "k", "v", "proj_out")}}

  n_in = channels * 5 if c["with_fourier_features"] else channels
  sm = {"dense0": dense(n + 1, 4 * n), "dense1": dense(4 * n, 4 * n), "conv_in": conv(n_in, n)}
  for i in range(n_layer):
    sm[f"down.block_{i}"] = resnet(n)
    if c["with_attention"]:
      sm[f"down.attn_{i}"] = attn()
  sm.update({"mid.block_1": resnet(n), "mid.attn_1": attn(), "mid.block_2": resnet(n)})
  for i in range(n_layer + 1):
    sm[f"up.block_{i}"] = resnet(2 * n)
    if c["with_attention"]:
      sm[f"up.attn_{i}"] = attn()
  sm.update({"GroupNorm_0": norm(n), "conv_out": conv(n, channels)})
  params = {"score_model": sm}
  if c["gamma_type"] == "learnable_scalar":
    params["gamma"] = {"w": leaf((1,), "w"), "b": leaf((1,), "b")}
  elif c["gamma_type"] == "learnable_nnet":
    params["gamma"] = {"l1": {"kernel": leaf((1, 1), "w"), "bias": leaf((1,), "b")},
                       "l2": {"kernel": leaf((1, 1024), "l2"), "bias": leaf((1024,), "l2")},
                       "l3": {"kernel": leaf((1024, 1), "l3")}}
  return params


def random_leaf(seed):
  """Random non-zero weights of the scale a trained network has (so that every block changes
  its input): kernels ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.2^2);
  schedule parameters around the official initialisation, w < 0 (the official code uses |w|)."""
  rng = np.random.default_rng(seed)

  def leaf(shape, kind):
    z = rng.standard_normal(shape)
    if kind == "kernel":
      z = z / math.sqrt(math.prod(shape[:-1]))
    elif kind == "bias":
      z = 0.1 * z
    elif kind == "scale":
      z = 1.0 + 0.2 * z
    elif kind == "w":
      z = -(18.3 + 0.1 * z)
    elif kind == "b":
      z = -13.3 + 0.1 * z
    return z.astype(np.float32)
  return leaf


def closed_form_count(n, n_layer, channels, fourier, attention, gamma_type):
  """The official model's parameter count, term by term."""
  conv = lambda i, o: 9 * i * o + o
  resnet = lambda i: 2 * i + conv(i, n) + 4 * n * n + 2 * n + conv(n, n) + (
      i * n + n if i != n else 0)
  attn = 2 * n + 4 * (n * n + n)
  n_in = channels * 5 if fourier else channels
  count = ((n + 1) * 4 * n + 4 * n) + (16 * n * n + 4 * n) + conv(n_in, n)
  count += n_layer * (resnet(n) + (attn if attention else 0))
  count += 2 * resnet(n) + attn
  count += (n_layer + 1) * (resnet(2 * n) + (attn if attention else 0))
  count += 2 * n + conv(n, channels)
  return count + {"fixed": 0, "learnable_scalar": 2, "learnable_nnet": 2 + 2 * 1024 + 1024}[
      gamma_type]


def size(tree):
  return sum(int(np.size(x)) for x in jax.tree_util.tree_leaves(tree))


# ------------------------------------------------------------------ the official forward pass


def swish(x):
  return x / (1.0 + np.exp(-x))


def np_dense(x, p):
  return x @ p["kernel"] + p.get("bias", 0.0)


def np_conv(x, p):
  """3x3 'SAME' convolution, NHWC."""
  h, w = x.shape[1:3]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  return sum(xp[:, i:i + h, j:j + w] @ p["kernel"][i, j] for i in range(3) for j in range(3)) + \
      p["bias"]


def np_group_norm(x, p, groups=32):
  g = x.reshape(x.shape[0], -1, groups, x.shape[-1] // groups)
  g = (g - g.mean(axis=(1, 3), keepdims=True)) / np.sqrt(g.var(axis=(1, 3), keepdims=True) + 1e-6)
  return g.reshape(x.shape) * p["scale"] + p["bias"]


def np_resnet(x, cond, p):
  h = np_conv(swish(np_group_norm(x, p["GroupNorm_0"])), p["conv1"])
  h = h + (cond @ p["cond_proj"]["kernel"])[:, None, None, :]
  h = np_conv(swish(np_group_norm(h, p["GroupNorm_1"])), p["conv2"])
  if "nin_shortcut" in p:
    x = np_dense(x, p["nin_shortcut"])
  return x + h


def np_attn(x, p):
  b, hgt, wdt, c = x.shape
  h = np_group_norm(x, p["GroupNorm_0"]).reshape(b, hgt * wdt, c)
  q, k, v = (np_dense(h, p[name]) for name in ("q", "k", "v"))
  logits = q @ k.transpose(0, 2, 1) / math.sqrt(c)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  return x + np_dense(weights @ v, p["proj_out"]).reshape(x.shape)


def np_official_eps(c, sm, z, g):
  """The official score_model(z, g, conditioning=0, deterministic=True) in float64."""
  sm = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), sm)
  z = np.asarray(z, np.float64)
  n, n_layer = c["sm_n_embd"], c["sm_n_layer"]
  t = (np.asarray(g, np.float64) - c["gamma_min"]) / (c["gamma_max"] - c["gamma_min"])
  half = n // 2
  args = 1000.0 * t[:, None] * np.exp(-np.log(10000.0) / (half - 1) * np.arange(half))[None]
  cond = np.concatenate([np.sin(args), np.cos(args), np.zeros((len(t), 1))], axis=1)
  cond = swish(np_dense(swish(np_dense(cond, sm["dense0"])), sm["dense1"]))
  h = z
  if c["with_fourier_features"]:
    zf = (z[..., :, None] * (2.0 ** np.array([6, 7]) * 2 * np.pi)).reshape(*z.shape[:3], -1)
    h = np.concatenate([z, np.sin(zf), np.cos(zf)], axis=-1)
  hs = [np_conv(h, sm["conv_in"])]
  for i in range(n_layer):
    h = np_resnet(hs[-1], cond, sm[f"down.block_{i}"])
    if c["with_attention"]:
      h = np_attn(h, sm[f"down.attn_{i}"])
    hs.append(h)
  h = np_resnet(hs[-1], cond, sm["mid.block_1"])
  h = np_resnet(np_attn(h, sm["mid.attn_1"]), cond, sm["mid.block_2"])
  for i in range(n_layer + 1):
    h = np_resnet(np.concatenate([h, hs.pop()], axis=-1), cond, sm[f"up.block_{i}"])
    if c["with_attention"]:
      h = np_attn(h, sm[f"up.attn_{i}"])
  return np_conv(swish(np_group_norm(h, sm["GroupNorm_0"])), sm["conv_out"]) + z


def np_official_gamma(c, params, t):
  t = np.asarray(t, np.float64)
  if c["gamma_type"] == "fixed":
    return c["gamma_min"] + (c["gamma_max"] - c["gamma_min"]) * t
  g = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), params["gamma"])
  if c["gamma_type"] == "learnable_scalar":
    return g["b"][0] + abs(g["w"][0]) * t
  t = t[:, None]
  out = t * np.abs(g["l1"]["kernel"]) + g["l1"]["bias"]
  s = 1.0 / (1.0 + np.exp(-((2 * t - 1) @ np.abs(g["l2"]["kernel"]) + g["l2"]["bias"])))
  return (out + 2 * (s - 0.5) @ np.abs(g["l3"]["kernel"]) / 1024)[:, 0]


def rel_err(a, b):
  """max |a - b| / max |b|: the error relative to the array's scale."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


# ------------------------------------------------------------------ counts


def test_paper_parameter_counts():
  shape_leaf = lambda shape, kind: np.broadcast_to(np.float32(0), shape)
  expected = 30_578_181   # the official code's count for configs/cifar10.py
  assert closed_form_count(128, 32, 3, True, False, "learnable_scalar") == expected
  assert size(official_tree(PAPER, 3, shape_leaf)) == expected
  assert official.official_param_count(PAPER, 3) == expected
  model = official.model_from_config(PAPER, 3)
  z = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  c = jax.ShapeDtypeStruct((1,), jnp.float32)
  net_params = jax.eval_shape(model.network.init, jax.random.key(0), z, c)
  assert size(net_params) == expected - 2   # + gamma_min, log_range of learned_linear
  assert net_params["params"]["cond_embed"]["dense0"]["kernel"].shape == (129, 512)
  assert net_params["params"]["mid_attn"]["k"]["bias"].shape == (128,)


# ------------------------------------------------------------------ conversion

# gamma_type, channels, with_attention, with_fourier_features: the network cases cover 1 and 3
# channels, attention and Fourier features on and off; the schedule alone is checked for 'fixed'.
CASES = [
    ("learnable_scalar", 3, False, True),
    ("learnable_nnet", 1, True, False),
]


def mapped_leaves(sm):
  """(official path, official array, converted path, index in a scanned stack or None) for
  every network leaf, by the layer correspondence of the official layout."""
  block = {"GroupNorm_0": "norm1", "conv1": "conv1", "cond_proj": "cond_proj",
           "GroupNorm_1": "norm2", "conv2": "conv2", "nin_shortcut": "nin_shortcut"}
  attn = {"GroupNorm_0": "norm", "q": "q", "k": "k", "v": "v", "proj_out": "proj_out"}
  mid = {"mid.block_1": "mid_block1", "mid.attn_1": "mid_attn", "mid.block_2": "mid_block2"}
  out = []
  for name, layer in sm.items():
    index, parts = None, None
    if name in ("dense0", "dense1"):
      dest = ("cond_embed", name)
    elif name in ("conv_in", "conv_out"):
      dest = (name,)
    elif name == "GroupNorm_0":
      dest = ("norm_out",)
    elif name in mid:
      dest, parts = (mid[name],), attn if "attn" in name else block
    else:   # down.block_<i>, down.attn_<i>, up.block_<i>, up.attn_<i>
      stack, rest = name.split(".")
      kind, i = rest.split("_")
      dest, index, parts = (stack, kind), int(i), block if kind == "block" else attn
    for path, x in flax.traverse_util.flatten_dict(layer).items():
      if parts is not None:
        path = (parts[path[0]],) + path[1:]
      out.append((f"{name}/{'/'.join(path)}", x, dest + path, index))
  return out


def check_gamma(model, variables, c, params):
  t = np.linspace(0.0, 1.0, 21, dtype=np.float32)
  gamma = model.apply(variables, t, method=model.gamma)
  assert rel_err(gamma, np_official_gamma(c, params, t)) < 1e-4


@pytest.mark.parametrize("gamma_type,channels,attention,fourier", CASES)
def test_convert_layer_by_layer_and_forward(gamma_type, channels, attention, fourier):
  c = config(gamma_type=gamma_type, with_attention=attention, with_fourier_features=fourier)
  params = official_tree(c, channels, random_leaf(channels))
  model, variables = official.convert({"params": params}, c, image_shape=(8, 8, channels))
  assert model.image_shape == (8, 8, channels) and model.T == 0 and model.vocab_size == 256
  assert model.schedule == official.GAMMA_TYPES[gamma_type]
  ours = jax.device_get(variables["params"])

  # Layer by layer: every official network leaf is where the mapping puts it, unchanged.
  leaves = mapped_leaves(params["score_model"])
  assert len(leaves) == len(jax.tree_util.tree_leaves(params["score_model"]))
  for name, x, path, index in leaves:
    y = functools.reduce(lambda d, k: d[k], path, ours["network"])
    np.testing.assert_array_equal(y if index is None else y[index], x, err_msg=name)
  # Counts: converted == official tree == closed form == the module's own count.
  count = closed_form_count(32, 2, channels, fourier, attention, gamma_type)
  assert size(ours) == size(params) == count == official.official_param_count(c, channels)

  # The forward passes against the official numpy forward pass.
  rng = np.random.default_rng(5)
  z = rng.standard_normal((2, 8, 8, channels)).astype(np.float32)
  g = np.array([-11.0, 3.5], np.float32)
  eps = jit(functools.partial(model.apply, method=model.eps))(variables, z, g)
  ref = np_official_eps(c, params["score_model"], z, g)
  assert rel_err(eps, ref) < 1e-4
  assert rel_err(np.asarray(eps) - z, ref - z) < 1e-4        # the network's part alone
  assert np.max(np.abs(ref - z)) > 0.1 * np.max(np.abs(z))   # ... which is not negligible
  check_gamma(model, variables, c, params)


def test_convert_fixed_schedule():
  """gamma_type 'fixed': no schedule parameters on either side; gamma is the fixed line."""
  c = config(gamma_type="fixed", sm_n_layer=1, gamma_min=-10.0, gamma_max=7.0)
  params = official_tree(c, 1, random_leaf(2))
  assert "gamma" not in params
  model, variables = official.convert({"params": params}, c, image_shape=(8, 8, 1))
  assert set(variables["params"]) == {"network"} and model.schedule == "fixed_linear"
  check_gamma(model, variables, c, params)
  assert size(variables) == closed_form_count(32, 1, 1, True, False, "fixed")


def test_blocks_by_hand():
  """A ResnetBlock (middle and up path) and an AttnBlock of the official layout, with the
  mapped kernels, against the same blocks computed by hand from the official kernels."""
  c = config()
  params = official_tree(c, 3, random_leaf(3))
  _, variables = official.convert({"params": params}, c, image_shape=(8, 8, 3))
  net = variables["params"]["network"]
  sm = params["score_model"]
  rng = np.random.default_rng(1)
  x = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
  skip = rng.standard_normal((2, 4, 4, 32)).astype(np.float32)
  cond = rng.standard_normal((2, 128)).astype(np.float32)
  up0 = jax.tree_util.tree_map(lambda a: a[0], net["up"]["block"])

  @jit
  def blocks(x, skip, cond):
    mid = nets.ResnetBlock(norm_groups=32).apply({"params": net["mid_block1"]}, x, cond)
    up = nets.ResnetBlock(32, norm_groups=32).apply(
        {"params": up0}, jnp.concatenate([x, skip], -1), cond)
    attn = nets.AttnBlock(key_bias=True, norm_groups=32).apply({"params": net["mid_attn"]}, x)
    return mid, up, attn

  mid, up, attn = blocks(x, skip, cond)
  assert rel_err(mid, np_resnet(x, cond, sm["mid.block_1"])) < 1e-5
  assert rel_err(up, np_resnet(np.concatenate([x, skip], -1), cond, sm["up.block_0"])) < 1e-5
  assert rel_err(attn - x, np_attn(x, sm["mid.attn_1"]) - x) < 1e-5


# ------------------------------------------------------------------ config and layout errors


@pytest.mark.parametrize("overrides, message", [
    (dict(gamma_type="cosine"), r"gamma_type 'cosine' is not supported; choose one of fixed, "
                                r"learnable_scalar, learnable_nnet"),
    (dict(sm_n_embd=48), r"sm_n_embd=48 is not a positive multiple of 32"),
    (dict(with_attention=True), r"do not fit the official model config: missing "
                                r"score_model/down.attn_0/GroupNorm_0/bias"),
    (dict(sm_n_layer=1), r"unexpected score_model/down.block_1/"),
    (dict(with_fourier_features=False), r"wrong shapes score_model/conv_in/kernel \(3, 3, 15, "
                                        r"32\) \(expected \(3, 3, 3, 32\)\)"),
    (dict(gamma_type="fixed"), r"unexpected gamma/b, gamma/w"),
])
def test_errors_name_the_problem(overrides, message):
  params = official_tree(config(), 3, lambda shape, kind: np.ones(shape, np.float32))
  with pytest.raises(ValueError, match=message):
    official.convert({"params": params}, config(**overrides))


def test_missing_config_field_and_wrong_variables():
  c = config()
  del c["sm_pdrop"]
  with pytest.raises(ValueError, match=r"the official model config lacks sm_pdrop"):
    official.convert({}, c)
  with pytest.raises(ValueError, match=r"official_variables must be the official VDM module's "
                     r"variables.*found \['encdec'\]"):
    official.convert({"params": {"encdec": {}}}, config())


def test_official_model_config_of_the_paper_config():
  """configs/cifar10_paper.py describes the official CIFAR-10 model; the default network is
  not in the official layout, and the error says which fields differ."""
  from experiments.configs import cifar10_paper
  from vdm_jax import config as config_lib
  spec = config_lib.resolve(cifar10_paper.get_config(), num_devices=8)
  assert official.official_model_config(spec.model.build()) == PAPER
  default = spec.model.build().clone(network=nets.VDMScoreNet())
  with pytest.raises(ValueError, match=r"config.model.vdm_unet.cond_scalar_input=False "
                     r"\(official: True\); config.model.vdm_unet.attn_key_bias=False"):
    official.official_model_config(default)


# ------------------------------------------------------------------ checkpoints


def write_state(path, params, ema_params, step):
  state = {"step": np.int32(step), "params": params, "ema_params": ema_params,
           "opt_state": {"0": {"count": np.int32(step), "mu": params, "nu": params},
                         "1": {}, "2": {}}}
  path.write_bytes(flax.serialization.msgpack_serialize(state))


def test_load_checkpoint(tmp_path):
  c = config(gamma_type="fixed", sm_n_layer=1, with_fourier_features=False)
  raw = official_tree(c, 1, random_leaf(1))
  ema = jax.tree_util.tree_map(lambda a: a * np.float32(0.5), raw)
  folder = tmp_path / "checkpoints-0"
  folder.mkdir()
  for n in (1, 2, 10):
    write_state(folder / f"ckpt-{n}.flax", raw, ema, 100 * n)
  # clu's TensorFlow record names the newest complete checkpoint: ckpt-10 was never completed.
  (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\n'
                                     'all_model_checkpoint_paths: "ckpt-1"\n'
                                     'all_model_checkpoint_paths: "ckpt-2"\n')
  model, variables, meta = official.load_checkpoint(folder, c)
  assert meta == {"path": str(folder / "ckpt-2.flax"), "step": 200, "params": "ema_params"}
  assert model.image_shape == (32, 32, 1) and model.schedule == "fixed_linear"
  np.testing.assert_array_equal(variables["params"]["network"]["conv_in"]["kernel"],
                                ema["score_model"]["conv_in"]["kernel"])
  _, variables, meta = official.load_checkpoint(folder / "ckpt-1.flax", c, ema=False)
  assert (meta["step"], meta["params"]) == (100, "params")
  np.testing.assert_array_equal(variables["params"]["network"]["conv_out"]["kernel"],
                                raw["score_model"]["conv_out"]["kernel"])
  # Without the record: the highest number.
  (folder / "checkpoint").unlink()
  assert official.load_checkpoint(folder, c)[2]["step"] == 1000

  # A cut file, a foreign msgpack file, a folder without checkpoints, a missing path.
  cut = tmp_path / "ckpt-3.flax"
  cut.write_bytes((folder / "ckpt-2.flax").read_bytes()[:5000])
  with pytest.raises(ValueError, match=r"ckpt-3.flax \(5000 bytes\) is not a readable "
                     r"checkpoint .*expected the msgpack train state \(step, params, "
                     r"ema_params, opt_state\)"):
    official.load_checkpoint(cut, c)
  foreign = tmp_path / "other.flax"
  foreign.write_bytes(flax.serialization.msgpack_serialize({"weights": np.zeros(3)}))
  with pytest.raises(ValueError, match=r"other.flax holds \['weights'\]; expected the msgpack"):
    official.load_checkpoint(foreign, c)
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match=r"empty holds no ckpt-<n>.flax file"):
    official.load_checkpoint(tmp_path / "empty", c)
  with pytest.raises(FileNotFoundError, match=r"no such file or folder"):
    official.load_checkpoint(tmp_path / "nowhere", c)
  # Weights of another model: the error names the file and what does not fit.
  with pytest.raises(ValueError, match=r"ckpt-10.flax \(ema_params\): the official variables do "
                     r"not fit"):
    official.load_checkpoint(folder, config(gamma_type="fixed", sm_n_layer=2,
                                            with_fourier_features=False))


# ------------------------------------------------------------------ the command line


def run_cli(*args):
  env = {k: v for k, v in os.environ.items() if k != "VDM_DATA_DIR"}
  env.setdefault("JAX_PLATFORMS", "cpu")
  proc = subprocess.run([sys.executable, "-m", "experiments.train", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-4000:]}"
  return proc.stdout


def test_cli_eval_and_sample_an_official_checkpoint(tmp_path):
  """--mode=eval --official_checkpoint on Fashion-MNIST (a subprocess, as a user runs it), and
  the sample mode's same path in this process, with a config that describes the checkpoint's
  (tiny, official-layout) model."""
  c = config(sm_n_layer=1, with_fourier_features=False, gamma_min=-10.0)
  params = official_tree(c, 1, random_leaf(4))
  folder = tmp_path / "checkpoints-0"
  folder.mkdir()
  write_state(folder / "ckpt-3.flax", params, params, 30)
  network = dict(n_embd=32, n_layer=1, with_fourier_features=False, dropout=0.1,
                 cond_scalar_input=True, attn_key_bias=True, norm_groups=32)
  overrides = {"model.network": "vdm_unet", "model.vdm_unet": network, "eval.batch_size": 200,
               "sampling.per_device_batch": 4}
  config_file = write_config_file(tmp_path / "official.py", **overrides)
  workdir = tmp_path / "work"

  out = run_cli(f"--config={config_file}", f"--workdir={workdir}", "--mode=eval",
                f"--official_checkpoint={folder}")
  assert "step 30: test bpd" in out and "(recon " in out
  record = json.loads(out.strip().splitlines()[-1])
  assert record["eval/num_images"] == 200 and record["checkpoint"] == str(folder)
  terms = record["eval/recon_bpd"] + record["eval/prior_bpd"] + record["eval/diffusion_bpd"]
  assert np.isfinite(record["eval/bpd"]) and record["eval/bpd_se"] > 0
  np.testing.assert_allclose(terms, record["eval/bpd"], rtol=1e-5)
  assert json.loads((workdir / "eval_official_step_30.json").read_text()) == record

  from vdm_jax import config as config_lib
  from vdm_jax import training
  spec = config_lib.resolve(tiny_config(**overrides))
  out = training.sample_checkpoint(spec, workdir, num_samples=4, official_checkpoint=folder)
  assert out["step"] == 30 and out["dir"] == str(workdir / "samples_official_step_30")
  shards = sorted((workdir / "samples_official_step_30").glob("chunk_*-process_0.npz"))
  images = np.concatenate([np.load(p)["images"] for p in shards])
  assert images.shape == (4, 28, 28, 1) and images.dtype == np.uint8
  assert (workdir / "samples_official_step_30.png").exists()
  with pytest.raises(ValueError, match=r"an official checkpoint is chosen by its path"):
    training.sample_checkpoint(spec, workdir, step=30, official_checkpoint=folder)
