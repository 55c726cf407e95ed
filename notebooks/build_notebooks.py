"""Writes the notebooks (outputs stripped) from the cell sources below: `python notebooks/build_notebooks.py`.

Keeping the sources here makes notebook diffs readable; the .ipynb files are what users open.
"""
import pathlib

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = pathlib.Path(__file__).parent

# The first code cell of every notebook: vdm_jax from the one source named at its top (or the
# environment variable of that name, which the tests set), then the devices JAX found.
INSTALL = '''\
# Where vdm_jax is installed from, with pip: a git URL of your copy of the repository
# ("git+https://<host>/<you>/vdm_jax.git") or the path of a checkout. Not needed where
# vdm_jax is already importable. An environment variable VDM_JAX_SOURCE overrides it.
VDM_JAX_SOURCE = ""

import importlib
import importlib.util
import os
import subprocess
import sys
VDM_JAX_SOURCE = os.environ.get("VDM_JAX_SOURCE", VDM_JAX_SOURCE)
if importlib.util.find_spec("vdm_jax") is None:
  if not VDM_JAX_SOURCE:
    raise RuntimeError(
        "vdm_jax is not installed. Set VDM_JAX_SOURCE at the top of this cell to a git URL of "
        "your copy of the repository (git+https://...) or to the path of a checkout, then run "
        "this cell again.")
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", VDM_JAX_SOURCE], check=True)
  importlib.invalidate_caches()   # let this running kernel see the new package
import jax
print("vdm_jax:", importlib.util.find_spec("vdm_jax").origin)
# JAX takes a GPU or TPU when the runtime has one (Colab: Runtime > Change runtime type).
print("JAX devices:", jax.devices())
# Datasets are downloaded once into ~/.cache/vdm_jax (README, "Data").
# The tests execute this notebook with small settings; a person gets the full ones.
FAST = os.environ.get("VDM_NOTEBOOK_FAST", "0") == "1"'''

TOUR = [
    new_markdown_cell('''\
# A tour of Variational Diffusion Models with `vdm_jax`

Every formula below is computed by a library function, named next to it. Notation
(Kingma, Salimans, Poole & Ho, 2021): data x in (-1, 1), a noise schedule gamma(t) = log(sigma_t^2 / alpha_t^2)
increasing on t in [0, 1], variance preserving: alpha_t^2 = sigmoid(-gamma_t), sigma_t^2 = sigmoid(gamma_t).

In Colab, set `VDM_JAX_SOURCE` at the top of the first code cell to where vdm_jax is installed from.'''),
    new_code_cell(INSTALL),
    new_code_cell('''\
import math
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from vdm_jax import data, diffusion, likelihood, losses, point_masses, schedules

images, labels = data.load_arrays("fashion_mnist", "test")   # uint8 [10000, 28, 28, 1]
x_int = jnp.asarray(images[:8])
x = likelihood.encode(x_int, 256)                             # bin centres in (-1, 1)
print(x_int.shape, x_int.dtype, float(x.min()), float(x.max()))'''),
    new_markdown_cell('''\
## Noise schedules

`schedules.FixedLinear`, `Cosine`, `DDPMLinear`, `LearnedLinear` and the learnable monotone network
`MonotoneNet` all map t to gamma(t). From gamma: alpha^2 = `schedules.alpha_sq`, sigma^2 = `schedules.sigma_sq`,
SNR = exp(-gamma) = `schedules.snr`, all through sigmoid/softplus (no `1 - small`).'''),
    new_code_cell('''\
t = jnp.linspace(0, 1, 201)
names = ["fixed_linear", "cosine", "ddpm_linear", "monotone_net"]
fig, axes = plt.subplots(1, 4, figsize=(16, 3.2))
for name in names:
  sched = schedules.make_schedule(name, -13.3, 5.0)
  params = sched.init(jax.random.PRNGKey(0), t)
  if name == "monotone_net":   # a random interior (the endpoints stay exactly -13.3 and 5)
    params = jax.tree_util.tree_map(lambda p: 4.0 * p if p.ndim == 2 else p, params)
  g = sched.apply(params, t)
  axes[0].plot(t, g, label=name)
  axes[1].semilogy(t, schedules.snr(g))
  axes[2].plot(t, schedules.alpha(g))
  axes[3].plot(t, schedules.sigma(g))
for ax, title in zip(axes, ["gamma(t)", "SNR(t) = exp(-gamma)", "alpha_t", "sigma_t"]):
  ax.set_title(title); ax.set_xlabel("t")
axes[0].legend(fontsize=8)
plt.tight_layout(); plt.show()'''),
    new_markdown_cell('''\
## The forward process q(z_t | x) = N(alpha_t x, sigma_t^2 I)

`diffusion.marginal(x, gamma_t)` gives the mean and variance; `diffusion.sample_marginal` draws z_t.'''),
    new_code_cell('''\
linear = schedules.FixedLinear(-13.3, 5.0)
gamma_fn = lambda t: linear.apply({}, t)
ts = [0.0, 0.3, 0.5, 0.6, 0.7, 0.8, 1.0]
fig, axes = plt.subplots(2, len(ts), figsize=(2 * len(ts), 4.2))
for j, tj in enumerate(ts):
  z, _ = diffusion.sample_marginal(jax.random.PRNGKey(j), x[:2], gamma_fn(jnp.float32(tj)))
  for i in range(2):
    axes[i, j].imshow(z[i, ..., 0], cmap="gray", vmin=-1.5, vmax=1.5); axes[i, j].axis("off")
  axes[0, j].set_title(f"t={tj}  gamma={float(gamma_fn(jnp.float32(tj))):.1f}", fontsize=8)
plt.tight_layout(); plt.show()'''),
    new_markdown_cell('''\
## The top-down posterior q(z_s | z_t, x)

`diffusion.posterior(x, z_t, gamma_s, gamma_t)` returns mu_Q = (alpha_{t|s} sigma_s^2 / sigma_t^2) z_t
+ alpha_s (-expm1(gamma_s - gamma_t)) x and sigma_Q^2 = -expm1(gamma_s - gamma_t) sigma_s^2.
Check it against Bayes' rule, q(z_s | x) q(z_t | z_s), multiplied out in float64:'''),
    new_code_cell('''\
gs, gt = np.float32(-2.0), np.float32(1.0)
z_t, _ = diffusion.sample_marginal(jax.random.PRNGKey(1), x, gt)
mean, var = diffusion.posterior(x, z_t, gs, gt)
a2 = lambda g: 1 / (1 + np.exp(np.float64(g)))
a2s, a2t = a2(gs), a2(gt)
a_ts2 = a2t / a2s
s2_ts = (1 - a2t) - a_ts2 * (1 - a2s)
prec = 1 / (1 - a2s) + a_ts2 / s2_ts
mean_ref = (np.sqrt(a2s) * np.asarray(x, np.float64) / (1 - a2s) + np.sqrt(a_ts2) * np.asarray(z_t, np.float64) / s2_ts) / prec
print("max |mean - Bayes| =", np.abs(np.asarray(mean) - mean_ref).max(), " var:", float(np.ravel(var)[0]), 1 / prec)'''),
    new_markdown_cell('''\
## The three loss terms and the diffusion integrand

`losses.vdm_loss` returns, per example and in nats, recon = -log p(x | z_0) (`likelihood.recon_loss`, the
discrete decoder), prior = KL(q(z_1 | x) || N(0, I)) (`likelihood.prior_kl`) and the diffusion term
0.5 gamma'(t) ||eps - eps_hat(z_t; gamma_t)||^2 with t ~ U(0, 1) (`losses.diffusion_terms`).

To see the bound at its best, take the data distribution to be these 8 images, uniformly: its optimal
denoiser has a closed form (`point_masses.optimal_eps_fn`), and the continuous-time bound then equals
H(x) + KL(q(z_1) || N(0, I)) + (recon - H(x | z_0)). With a wide schedule, gamma in [-16, 12], z_0 determines x
(recon ~ 0) and z_1 is almost pure noise (prior ~ 0), so the bound is the entropy log 8 = 2.079 nats.
(With the training range [-13.3, 5], 784 dimensions cost ~4 nats of recon and ~1.8 of prior here.)'''),
    new_code_cell('''\
eps_fn = point_masses.optimal_eps_fn(x)
wide = schedules.FixedLinear(-16.0, 12.0)
gamma_fn = lambda t: wide.apply({}, t)
n_batches = 8 if FAST else 64
def batch_loss(key, T=0):
  k1, k2 = jax.random.split(key)
  idx = jax.random.randint(k1, (512,), 0, 8)
  return losses.vdm_loss(eps_fn, gamma_fn, x_int[idx], k2, T=T)
batch_loss = jax.jit(batch_loss, static_argnames="T")
per_batch = [batch_loss(k) for k in jax.random.split(jax.random.PRNGKey(0), n_batches)]
for term in ["recon", "prior", "diffusion", "total"]:
  vals = np.array([getattr(l, term).mean() for l in per_batch])
  se = vals.std(ddof=1) / math.sqrt(len(vals))
  print(f"{term:9s} {vals.mean():8.4f} +- {se:.4f} nats")
print("entropy   ", round(math.log(8), 4))
assert abs(vals.mean() - math.log(8)) < 4 * se + 0.01   # the bound meets the entropy'''),
    new_code_cell('''\
# The integrand against t: where in time the bound's nats are spent.
t_grid = jnp.linspace(0.0, 1.0, 101)
def integrand(tj, key):
  terms = losses.diffusion_terms(eps_fn, gamma_fn, jnp.tile(x, (32, 1, 1, 1)), jnp.full((256,), tj), key)
  return terms.loss.mean()
vals = jax.vmap(integrand)(t_grid, jax.random.split(jax.random.PRNGKey(3), t_grid.size))
plt.figure(figsize=(6, 3.2))
plt.plot(t_grid, vals); plt.xlabel("t"); plt.ylabel("0.5 gamma'(t) E||eps - eps_hat||^2 [nats]")
plt.title(f"integral ~ {float(jnp.mean(vals)):.3f} nats (log 8 = {math.log(8):.3f})")
plt.tight_layout(); plt.show()'''),
    new_markdown_cell('''\
## Discrete time

With T steps the diffusion term is 0.5 T expm1(gamma_t - gamma_s) ||eps - eps_hat||^2 (`vdm_loss(..., T=T)`).
The paper's result: the continuous-time loss is below every discrete one, and more steps mean a lower bound.'''),
    new_code_cell('''\
for T in [2, 10, 100, 0]:
  vals = np.array([batch_loss(k, T=T).total.mean() for k in jax.random.split(jax.random.PRNGKey(T), n_batches)])
  print(f"T={T if T else 'inf':>4}: {vals.mean():7.3f} +- {vals.std(ddof=1) / math.sqrt(len(vals)):.3f} nats")'''),
]

TRAIN = [
    new_markdown_cell('''\
# Train a VDM and sample from it

[Open in Colab](https://colab.research.google.com/) with a GPU runtime for the full setting; on a laptop CPU the
quickstart network trains in about ten minutes. This notebook trains a *class-conditional* model
(labels are dropped 10% of the time, so the same network is also unconditional), then shows the bpd
curve, samples, a denoising trajectory, classifier-free guidance and inpainting. First set `VDM_JAX_SOURCE` at
the top of the first code cell to where vdm_jax is installed from; Fashion-MNIST is downloaded on first use.'''),
    new_code_cell(INSTALL),
    new_code_cell('''\
import tempfile
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from experiments.configs import quickstart
from vdm_jax import config as config_lib
from vdm_jax import data, logging_utils, sampling, training

config = quickstart.get_config()
config.model.num_classes = 10            # Fashion-MNIST's classes; null label = 10
config.model.label_dropout = 0.1
if FAST:                                 # the tests' setting: seconds, not minutes
  config.model.unet.ch = 8
  config.training.num_steps = 20
  config.training.log_every = 5
  config.sampling.T = 16
spec = config_lib.resolve(config)        # every field checked before anything runs
workdir = tempfile.mkdtemp(prefix="vdm_notebook_")
result = training.train_and_evaluate(spec, workdir)
print({k: v for k, v in result.items() if k.startswith("eval/")})'''),
    new_code_cell('''\
metrics = logging_utils.read_metrics(workdir)
train_rec = [m for m in metrics if "train/bpd" in m]
eval_rec = [m for m in metrics if "eval/bpd" in m]
plt.figure(figsize=(6, 3.2))
plt.plot([m["step"] for m in train_rec], [m["train/bpd"] for m in train_rec], label="train (batch)")
plt.errorbar([m["step"] for m in eval_rec], [m["eval/bpd"] for m in eval_rec],
             yerr=[m["eval/bpd_se"] for m in eval_rec], fmt="o", label="test (EMA)")
plt.xlabel("step"); plt.ylabel("bits per dim"); plt.legend(); plt.tight_layout(); plt.show()'''),
    new_code_cell('''\
# The sample grid the training run wrote (labels 0..9 cyclically).
import glob
from PIL import Image
grid = sorted(glob.glob(f"{workdir}/samples/step_*.png"))[-1]
plt.figure(figsize=(5, 5)); plt.imshow(Image.open(grid), cmap="gray"); plt.axis("off"); plt.title(grid.split("/")[-1]); plt.show()'''),
    new_code_cell('''\
# A denoising trajectory: x_hat(z_t) as t goes from 1 to 0.
model, state, step = training.restore_state(spec, workdir)
variables = {"params": state.ema_params}
T = spec.sampling.T
images, traj = sampling.sample_model(model, variables, jax.random.PRNGKey(0), 4, T=T,
                                     labels=jnp.arange(4), trajectory_steps=8)
fig, axes = plt.subplots(4, 9, figsize=(13, 6))
for i in range(4):
  for j in range(8):
    axes[i, j].imshow(traj.x_hat[j, i, ..., 0], cmap="gray", vmin=-1, vmax=1)
    axes[0, j].set_title(f"t={float(traj.t[j]):.2f}", fontsize=8)
  axes[i, 8].imshow(images[i, ..., 0], cmap="gray", vmin=0, vmax=255); axes[0, 8].set_title("x")
for ax in axes.ravel(): ax.axis("off")
plt.tight_layout(); plt.show()'''),
    new_code_cell('''\
# Classifier-free guidance: eps = eps_c + w (eps_c - eps_null); w = 0 is the conditional model.
labels = jnp.repeat(jnp.arange(10), 4)
fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
for ax, w in zip(axes, [0.0, 1.0, 3.0]):
  imgs = sampling.sample_model(model, variables, jax.random.PRNGKey(1), 40, T=T, labels=labels,
                               guidance_weight=w)
  ax.imshow(logging_utils.image_grid(np.asarray(imgs), ncols=8)[..., 0], cmap="gray")
  ax.set_title(f"guidance w = {w}"); ax.axis("off")
plt.tight_layout(); plt.show()'''),
    new_code_cell('''\
# Inpainting: keep the top half of real test images, sample the bottom half.
test_images, test_labels = data.load_arrays("fashion_mnist", "test")
known = jnp.asarray(test_images[:8], jnp.int32)
mask = jnp.zeros(known.shape, bool).at[:, :14].set(True)
filled = sampling.sample_model(model, variables, jax.random.PRNGKey(2), 8, T=T,
                               labels=jnp.asarray(test_labels[:8]), known=known, known_mask=mask)
assert bool(jnp.all(jnp.where(mask, filled == known, True)))   # known pixels kept exactly
rows = np.concatenate([np.asarray(known), np.where(mask, known, 0), np.asarray(filled)])
plt.figure(figsize=(12, 5)); plt.imshow(logging_utils.image_grid(rows, ncols=8)[..., 0], cmap="gray")
plt.title("originals / what the model sees / completions"); plt.axis("off"); plt.show()'''),
]

SWIRL = [
    new_markdown_cell('''\
# Your own model on 2D data: the VDM loss as a library function

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/vdm_jax/blob/main/notebooks/2d_swirl.ipynb)

(In the badge's link, replace `OWNER` with the GitHub account that holds your copy of vdm_jax.)

This notebook uses none of vdm_jax's networks or training loop: it writes a small eps network with
flax.linen, takes a learnable noise schedule, and trains both with optax on the pure loss
`losses.vdm_loss(eps_fn, gamma_fn, x, key, data=...)`, which only needs two functions,
eps_fn(z_t, gamma_t) -> eps_hat and gamma_fn(t) -> gamma. The same training function fits the same
2D "swirl" twice: as 8-bit integers (`likelihood.Discrete`, a bound on a probability) and as real
numbers (`likelihood.Continuous`, a bound on a density). It runs in under two minutes on a 2-core
CPU. In Colab, set `VDM_JAX_SOURCE` at the top of the first code cell to where vdm_jax is installed from.'''),
    new_code_cell(INSTALL),
    new_markdown_cell('''\
## Data: a noisy two-armed spiral

Points on two interleaved spiral arms plus Gaussian noise, normalised by the training set's mean
and std. Because we generated them, their true density is known: `true_log_density` integrates the
noise over the arms, the reference the bounds below are measured against.'''),
    new_code_cell('''\
import math
import time
import flax.linen as nn
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
import optax
from vdm_jax import likelihood, losses, sampling, schedules

NOISE = 0.04     # std of the noise around the arms, in the raw units (radius <= 1)
R2_MIN = 0.02    # radius^2 ~ U(R2_MIN, 1): points spread about evenly along the arms


def arm(r, k):
  """The point at radius r on arm k (0 or 1): 1.5 turns, the arms half a turn apart."""
  theta = 3.0 * np.pi * r + np.pi * k
  return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=-1)


def swirl(n, seed):
  rng = np.random.default_rng(seed)
  points = arm(np.sqrt(rng.uniform(R2_MIN, 1.0, n)), rng.integers(0, 2, n))
  return (points + NOISE * rng.normal(size=points.shape)).astype(np.float32)


raw_train, raw_test = swirl(4096, seed=0), swirl(1024, seed=1)
mean, std = raw_train.mean(0), raw_train.std(0)
x_train, x_test = (raw_train - mean) / std, (raw_test - mean) / std


def true_log_density(x):
  """log p(x) of the generating process at normalised points x [N, 2]: the noise's Gaussian
  averaged over 8000 points of the arms (the midpoint rule in radius^2, which is uniform)."""
  u = np.linspace(R2_MIN, 1.0, 4001)
  r = np.sqrt((u[1:] + u[:-1]) / 2)
  on_arms = jnp.asarray(np.concatenate([arm(r, 0), arm(r, 1)]), jnp.float32)
  d2 = jnp.sum(jnp.square(jnp.asarray(x * std + mean)[:, None] - on_arms), axis=-1)
  log_p_raw = (jax.scipy.special.logsumexp(-d2 / (2 * NOISE**2), axis=1) - math.log(len(on_arms))
               - math.log(2 * math.pi * NOISE**2))
  return np.asarray(log_p_raw) + np.log(std).sum()   # the Jacobian of the normalisation


print("train", x_train.shape, "test", x_test.shape, "range", x_train.min(0), x_train.max(0))
print(f"true entropy of the normalised data: {-true_log_density(x_test).mean():.3f} nats per point")'''),
    new_markdown_cell('''\
## The model: an eps network and a learned schedule

The network sees z_t [B, 2] and gamma_t [B]; gamma_t enters through a sinusoidal embedding of
gamma normalised to about [0, 1] by the schedule's initial endpoints. Its output layer starts at zero,
so training starts from eps_hat = 0. The schedule is `schedules.make_schedule("learned_linear", ...)`,
a linen module t -> gamma(t) = gamma_min + (gamma_max - gamma_min) t whose two endpoints are
parameters (increasing by construction); with the continuous-time loss only the endpoints of a
schedule change the bound, so a linear one loses nothing. Both sets of parameters sit in one pytree.'''),
    new_code_cell('''\
GAMMA_MIN, GAMMA_MAX = -10.0, 6.0   # initial endpoints; the training moves them


class EpsMLP(nn.Module):
  hidden: int = 128
  num_layers: int = 4
  num_freqs: int = 16

  @nn.compact
  def __call__(self, z, gamma_t):
    g = (gamma_t - GAMMA_MIN) / (GAMMA_MAX - GAMMA_MIN)
    angles = g[:, None] * jnp.exp(jnp.linspace(0.0, math.log(1000.0), self.num_freqs))
    h = jnp.concatenate([z, jnp.sin(angles), jnp.cos(angles)], axis=-1)
    for _ in range(self.num_layers):
      h = nn.swish(nn.Dense(self.hidden)(h))
    return nn.Dense(z.shape[-1], kernel_init=nn.initializers.zeros)(h)


net = EpsMLP()
schedule = schedules.make_schedule("learned_linear", GAMMA_MIN, GAMMA_MAX)


def init_params(key):
  key_eps, key_gamma = jax.random.split(key)
  return {"eps": net.init(key_eps, jnp.zeros((1, 2)), jnp.zeros((1,))),
          "gamma": schedule.init(key_gamma, jnp.zeros((1,)))}


def model_fns(params):
  """The two functions the loss and the sampler take."""
  eps_fn = lambda z, gamma_t: net.apply(params["eps"], z, gamma_t)
  gamma_fn = lambda t: schedule.apply(params["gamma"], t)
  return eps_fn, gamma_fn


print(jax.tree_util.tree_map(jnp.shape, init_params(jax.random.PRNGKey(0))["gamma"]))'''),
    new_markdown_cell('''\
## One training function for both data models

The data model is the only thing that differs between the two runs: it encodes x, gives the
reconstruction term and decodes samples. The loss is the bound itself (continuous time, T = 0), its
batch mean in nats per example; the network and the schedule's endpoints follow its gradient
jointly. `evaluate` averages each held-out point's three terms over many draws of (t, eps, z_0),
so the printed bound is that of the points, not of one noisy draw.'''),
    new_code_cell('''\
NUM_STEPS = 6000
BATCH_SIZE = 512


def train(data, x, *, num_steps=NUM_STEPS, batch_size=BATCH_SIZE, learning_rate=3e-3, seed=0):
  """Fits the eps network and the schedule to x; returns (params, per-step loss, compile s, train s)."""
  key_init, key_train = jax.random.split(jax.random.PRNGKey(seed))
  params = init_params(key_init)
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, num_steps, alpha=0.05))
  opt_state = optimizer.init(params)
  x = jnp.asarray(x)

  def loss_fn(params, batch, key):
    eps_fn, gamma_fn = model_fns(params)
    return losses.vdm_loss(eps_fn, gamma_fn, batch, key, data=data).total.mean()

  @jax.jit
  def train_step(params, opt_state, key):
    key_batch, key_loss = jax.random.split(key)
    batch = x[jax.random.randint(key_batch, (batch_size,), 0, x.shape[0])]
    loss, grads = jax.value_and_grad(loss_fn)(params, batch, key_loss)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  start = time.perf_counter()
  jax.block_until_ready(train_step(params, opt_state, key_train))   # compiles; result unused
  compile_s = time.perf_counter() - start
  curve = []
  for key in jax.random.split(key_train, num_steps):
    params, opt_state, loss = train_step(params, opt_state, key)
    curve.append(loss)
  curve = np.asarray(jax.device_get(curve))   # waits for the last step
  return params, curve, compile_s, time.perf_counter() - start - compile_s


def evaluate(params, data, x, num_draws=256, seed=1):
  """Each point's recon, prior and diffusion terms, averaged over num_draws draws: [3, N] nats."""
  eps_fn, gamma_fn = model_fns(params)

  def one_draw(key):
    terms = losses.vdm_loss(eps_fn, gamma_fn, x, key, data=data)
    return jnp.stack([terms.recon, terms.prior, terms.diffusion])

  keys = jax.random.split(jax.random.PRNGKey(seed), num_draws)
  return np.asarray(jax.jit(lambda k: jax.lax.map(one_draw, k).mean(0))(keys))


def run(data, x_tr, x_te):
  params, curve, compile_s, train_s = train(data, x_tr)
  terms = evaluate(params, data, jnp.asarray(x_te))
  total = terms.sum(0)                                # [N] nats per point
  nats, se = total.mean(), total.std(ddof=1) / math.sqrt(total.size)
  bpd = float(data.bits_per_dim(nats, 2))
  ends = schedule.apply(params["gamma"], jnp.array([0.0, 1.0]))
  print(f"{data.describe()}: {NUM_STEPS} steps of {BATCH_SIZE} in {train_s:.1f} s "
        f"(+ {compile_s:.1f} s compiling)")
  print(f"  held-out bound ({total.size} points x 256 draws): {nats:.3f} +- {se:.3f} nats per point "
        f"= {bpd:.3f} bits per dim, the {data.bpd_meaning}")
  print("  terms (nats per point): " + ", ".join(
      f"{name} {v:.4f}" for name, v in zip(["recon", "prior", "diffusion"], terms.mean(1))))
  print(f"  learned schedule: gamma(0) = {float(ends[0]):.2f}, gamma(1) = {float(ends[1]):.2f}")
  assert np.all(np.isfinite(terms))
  return {"data": data, "params": params, "curve": curve, "total": total, "nats": nats, "se": se,
          "bpd": bpd, "train_s": train_s}'''),
    new_markdown_cell('''\
## Run 1: 8-bit data

Each normalised coordinate is quantised to 256 levels over [-4, 4]: x_int = floor((x - low) / (high - low) * 256).
`likelihood.Discrete(256, low, high)` encodes level k at its bin centre low + (k + 1/2) (high - low) / 256
and decodes z_0 with a categorical over the 256 levels, so the bound is on the probability of the
integers: bits per dimension are >= 0 (at most 8).'''),
    new_code_cell('''\
LOW, HIGH, LEVELS = -4.0, 4.0, 256


def quantise(x):
  return np.clip(np.floor((x - LOW) / (HIGH - LOW) * LEVELS), 0, LEVELS - 1).astype(np.int32)


discrete = run(likelihood.Discrete(LEVELS, LOW, HIGH), quantise(x_train), quantise(x_test))
assert 0 <= discrete["bpd"] <= 8'''),
    new_markdown_cell('''\
## Run 2: real-valued data

The same points as floats with `likelihood.Continuous()`: the decoder is N(x; z_0 / alpha_0, exp(gamma_0) I)
and the bound is on a density of the normalised data, so it depends on their units and may be
negative (its recon term is: -log of a density whose std exp(gamma_0 / 2) is below 0.01).'''),
    new_code_cell('''\
continuous = run(likelihood.Continuous(), x_train, x_test)'''),
    new_markdown_cell('''\
## How tight are the bounds?

Both bounds are above the data's true entropy (in expectation), and their gap to it is the
bound's looseness plus the model's error. For the integers the reference is -log P(bin) ~
-log p(bin centre) + 2 log(256 / (high - low)), the density times the bin's area, since the density
barely changes within a bin (width 8/256 = 0.031; the noise's std is about 0.08 here). For the same
reason the discrete bound is about the continuous one plus 2 log(256 / 8) = 6.93 nats.'''),
    new_code_cell('''\
bin_nats = 2 * math.log(LEVELS / (HIGH - LOW))
centres = np.asarray(discrete["data"].encode(jnp.asarray(quantise(x_test))))
references = {"discrete": -true_log_density(centres) + bin_nats,
              "continuous": -true_log_density(x_test)}
for name, r in [("discrete", discrete), ("continuous", continuous)]:
  gap = r["total"] - references[name]                 # paired per point: less noisy
  gap_se = gap.std(ddof=1) / math.sqrt(gap.size)
  print(f"{name:10s} bound {r['nats']:7.3f}  true entropy {references[name].mean():7.3f}  "
        f"gap {gap.mean():.3f} +- {gap_se:.3f} nats per point")
  assert -3 * gap_se < gap.mean() < 0.5               # above the truth, and close to it
print(f"discrete bound - 2 log(256 / 8) = {discrete['nats'] - bin_nats:.3f}, "
      f"continuous bound = {continuous['nats']:.3f} nats")'''),
    new_markdown_cell('''\
## Samples

`sampling.sample(eps_fn, gamma_fn, key, shape, T=..., data=...)` runs the ancestral sampler from
z_1 ~ N(0, I) and decodes z_0 with the data model: int32 levels for `Discrete` (shown at their bin
centres), z_0 / alpha_0 for `Continuous` (`decode="sample"` would add the decoder's noise).'''),
    new_code_cell('''\
def near_fraction(points, radius=0.1):
  """The fraction of points within radius (about one noise std) of a training point."""
  return (np.sqrt(np.square(points[:, None] - x_train[None]).sum(-1)).min(1) < radius).mean()


held_out_near = near_fraction(x_test)
print(f"held-out data: {held_out_near:.1%} within 0.1 of a training point")
fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), sharex=True, sharey=True)
for ax, (name, r), color in zip(axes, [("discrete", discrete), ("continuous", continuous)], ["C0", "C1"]):
  eps_fn, gamma_fn = model_fns(r["params"])
  samples = sampling.sample(eps_fn, gamma_fn, jax.random.PRNGKey(2), (2000, 2), T=500, data=r["data"])
  points = np.asarray(r["data"].encode(samples))     # Discrete: levels -> bin centres
  near = near_fraction(points)
  print(f"{name}: samples {samples.dtype} {samples.shape}, {near:.1%} within 0.1 of a training point")
  assert near > 0.85                                  # the few others: between the inner turns
  ax.scatter(*x_train.T, s=2, c="lightgray", label="data")
  ax.scatter(*points.T, s=2, c=color, label="samples")
  ax.set_title(f"{name}: {r['bpd']:.3f} bits/dim, {near:.0%} of samples on the swirl")
  ax.set_aspect("equal"); ax.legend(loc="lower right", markerscale=4)
plt.tight_layout(); plt.show()'''),
    new_markdown_cell('''\
## The learned schedules and the loss curves'''),
    new_code_cell('''\
t = jnp.linspace(0.0, 1.0, 101)
plt.figure(figsize=(5.5, 3.5))
plt.plot(t, schedule.apply(init_params(jax.random.PRNGKey(0))["gamma"], t), "k--", label="initial")
for name, r in [("discrete", discrete), ("continuous", continuous)]:
  plt.plot(t, schedule.apply(r["params"]["gamma"], t), label=name)
plt.xlabel("t"); plt.ylabel("gamma(t) = log(sigma_t^2 / alpha_t^2)"); plt.legend()
plt.tight_layout(); plt.show()'''),
    new_code_cell('''\
fig, axes = plt.subplots(1, 2, figsize=(11, 3.5))
window = 100
for ax, (name, r) in zip(axes, [("discrete", discrete), ("continuous", continuous)]):
  bpd = np.asarray(r["data"].bits_per_dim(r["curve"], 2))
  ax.plot(bpd, alpha=0.3, lw=0.5, label="batch")
  ax.plot(np.arange(window - 1, len(bpd)), np.convolve(bpd, np.ones(window) / window, "valid"),
          label=f"mean of {window}")
  ax.axhline(r["bpd"], color="k", ls=":", label="held-out")
  ax.set_ylim(r["bpd"] - 1, r["bpd"] + 3)
  ax.set_title(f"{name}: training {r['train_s']:.0f} s"); ax.set_xlabel("step"); ax.set_ylabel("bits per dim")
  ax.legend()
plt.tight_layout(); plt.show()'''),
]

LATENT = [
    new_markdown_cell("""\
# Latent diffusion with a likelihood bound

[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)](https://colab.research.google.com/github/OWNER/vdm_jax/blob/main/notebooks/latent_diffusion.ipynb)

(In the badge's link, replace `OWNER` with the GitHub account that holds your copy of vdm_jax.)

Latent diffusion runs the diffusion on the latents of an autoencoder. Here the autoencoder's
decoder is a likelihood over 8-bit pixels (a discretised logistic per pixel dimension), so the
two stages together bound the data's log-likelihood:

-log p(x) <= E_q(z|x)[ -log p(x | z) ] - H(q(z | x)) + E_q(z|x)[ L_VDM(z) ],

where L_VDM is VDM's continuous-time bound on the latents. This notebook trains both stages on
Fashion-MNIST through the training system (`training.train_and_evaluate`, the configs of
`experiments/configs/ldm_fashion_mnist.py` made smaller): stage 1, the autoencoder; stage 2, a
class-conditional VDM on its latents whose labels enter the U-Net by cross-attention. It reports
the bound in bits per pixel dimension with its parts, and shows reconstructions and
class-conditional samples with classifier-free guidance, decoded to pixels. It took 8m46s on a 2-core
CPU (test bound 3.654 +- 0.017 bits per pixel dimension); in Colab a GPU runtime (Runtime > Change
runtime type) is faster. In Colab, set
`VDM_JAX_SOURCE` at the top of the first code cell to where vdm_jax is installed from."""),
    new_code_cell(INSTALL),
    new_markdown_cell("""\
## Stage 1: the autoencoder

28x28x1 images to 7x7x4 latents (two downsamplings), trained on -log p(x | z) + beta KL(q(z | x) || N(0, I))
with beta = 0.1 (latents that keep the images' shapes); its evaluation reports the bound with beta = 1 (decoder
NLL + KL, bits per pixel dimension), the PSNR of the decoder's mean and the KL per latent dimension (nats)."""),
    new_code_cell("""\
import math
import tempfile
import time
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np
from experiments.configs import ldm_fashion_mnist
from vdm_jax import config as config_lib
from vdm_jax import data, latent, logging_utils, metrics, sampling, training
from vdm_jax.training import latent_runs

root = tempfile.mkdtemp(prefix="vdm_latent_")
STEPS = 40 if FAST else 1000            # the tests' setting: seconds, not minutes
ae_config = ldm_fashion_mnist.get_config("autoencoder")
ae_config.training.update(num_steps=STEPS, checkpoint_every=STEPS, log_every=max(STEPS // 5, 1))
ae_config.eval.update(batch_size=500, max_batches=2 if FAST else None)
if FAST:
  ae_config.model.autoencoder.ch = 8
start = time.perf_counter()
ae_result = training.train_and_evaluate(config_lib.resolve(ae_config), f"{root}/ae")
print(f"stage 1: {time.perf_counter() - start:.0f} s")
for k in ("bpd", "decoder_bpd", "kl_bpd", "psnr", "kl_per_latent_dim", "latent_shape"):
  print(f"  {k}: {ae_result['eval/' + k]}")"""),
    new_code_cell("""\
# Reconstructions: test images, and the decoder's mean at the posterior mean of their latents.
ae = latent_runs.load(f"{root}/ae")      # EMA params, latent scale (computed on first use)
variables = {"params": ae.params}
test_images, test_labels = data.load_arrays("fashion_mnist", "test")
x = jnp.asarray(test_images[:16], jnp.int32)
mean, log_std = ae.model.apply(variables, x, method=ae.model.encode)
recon = np.asarray(ae.model.apply(variables, mean, method=ae.model.decode))
print("latents", mean.shape, "PSNR of these 16 (dB):", np.round(latent.psnr(np.asarray(x), recon), 1))
# The latent scale the stage-2 model trains with: 1 / std of z ~ q(z | x) over the training
# images, checked here by drawing z.
train_images = jnp.asarray(data.load_arrays("fashion_mnist", "train")[0][:2000], jnp.int32)
m, s = ae.model.apply(variables, train_images, method=ae.model.encode)
z = np.asarray(m + jnp.exp(s) * jax.random.normal(jax.random.PRNGKey(0), m.shape))
print(f"latent scale {ae.scale:.4f}; 1 / std of 2000 images' draws {1 / z.std():.4f}")
assert abs(ae.scale * z.std() - 1) < 0.05     # the scale is over all 60000 images
rows = np.concatenate([np.asarray(x), recon])
plt.figure(figsize=(12, 3.2)); plt.imshow(logging_utils.image_grid(rows, ncols=16)[..., 0], cmap="gray")
plt.title("test images / reconstructions"); plt.axis("off"); plt.show()"""),
    new_markdown_cell("""\
## Stage 2: VDM on the latents, class labels by cross-attention

The U-Net attends to a context [B, 1, 32] from a class-label encoder at both resolutions; labels
are dropped 10% of the time (the null context), so the same network is unconditional too and
classifier-free guidance works. The run records the autoencoder checkpoint's identity and refuses
another one on resume. Its evaluation is the pixel-space bound above, over the test images; the
model being class-conditional, it bounds -log p(x | y), which is below -log p(x) on average by at most the
labels' log 10 nats per image (0.004 bits per pixel dimension)."""),
    new_code_cell("""\
config = ldm_fashion_mnist.get_config("latent_cond")
config.model.autoencoder_workdir = f"{root}/ae"
config.training.update(num_steps=STEPS, checkpoint_every=STEPS, sample_every=STEPS,
                       log_every=max(STEPS // 5, 1))
config.eval.update(batch_size=500, max_batches=2 if FAST else None)
if FAST:
  config.model.unet.ch = 8
spec = config_lib.resolve(config)
start = time.perf_counter()
result = training.train_and_evaluate(spec, f"{root}/latent")
print(f"stage 2: {time.perf_counter() - start:.0f} s")
bound = {k: result["eval/" + k] for k in ("bpd", "bpd_se", "decoder_bpd", "encoder_entropy_bpd",
                                          "latent_bpd", "num_images")}
print(f"pixel-space bound {bound['bpd']:.3f} +- {bound['bpd_se']:.3f} bits per pixel dimension "
      f"over {bound['num_images']} test images: decoder {bound['decoder_bpd']:.3f} "
      f"- entropy of q(z | x) {bound['encoder_entropy_bpd']:.3f} + latent VDM {bound['latent_bpd']:.3f}")
print(f"stage 1 alone (prior N(0, I)): {ae_result['eval/bpd']:.3f} +- {ae_result['eval/bpd_se']:.3f}")
# A bound on -log p of 8-bit images is a positive number of bits.
assert 0 < bound["bpd"] and bound["bpd_se"] > 0"""),
    new_code_cell("""\
# Class-conditional samples (DPM-Solver++(2M), 20 steps), decoded to pixels, one class per
# column, with and without guidance; the feature network of the sample metrics classifies them.
model, state, _ = training.restore_state(spec, f"{root}/latent")
lat_vars = {"params": state.ema_params}
net = metrics.load_feature_network("fashion_mnist")
labels = jnp.tile(jnp.arange(10), 10)
fig, axes = plt.subplots(1, 2, figsize=(12, 6.5))
for ax, w in zip(axes, [0.0, 2.0]):
  u = sampling.sample_model(model, lat_vars, jax.random.PRNGKey(1), len(labels), sampler="dpmpp_2m",
                            T=20, labels=labels, guidance_weight=w)
  images = latent_runs.decode(ae, np.asarray(u))           # uint8 [100, 28, 28, 1]
  assert images.shape == (100, 28, 28, 1)
  accuracy = float(np.mean(np.argmax(np.asarray(net.logits_fn(images)), -1) == np.asarray(labels)))
  ax.imshow(logging_utils.image_grid(images, ncols=10)[..., 0], cmap="gray"); ax.axis("off")
  ax.set_title(f"guidance w = {w}: classified as asked {accuracy:.0%}")
plt.tight_layout(); plt.show()"""),
]

NOTEBOOKS = {"01_vdm_tour.ipynb": TOUR, "02_train_and_sample.ipynb": TRAIN,
             "2d_swirl.ipynb": SWIRL, "latent_diffusion.ipynb": LATENT}


def main():
  for name, cells in NOTEBOOKS.items():
    nb = new_notebook(cells=cells)
    for i, cell in enumerate(nb.cells):   # stable ids: a rebuild changes only what changed
      cell.id = f"cell-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {"provenance": []}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
  main()
