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

NOTEBOOKS = {"01_vdm_tour.ipynb": TOUR, "02_train_and_sample.ipynb": TRAIN}


def main():
  for name, cells in NOTEBOOKS.items():
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["accelerator"] = "GPU"
    nb.metadata["colab"] = {"provenance": []}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
  main()
