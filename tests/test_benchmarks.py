"""The benchmark scripts run end to end and report consistent numbers (tiny overrides of the
reference configs; the timings themselves are not asserted, benchmarks/README.md has them)."""
import ast
import json
import math
import re
import shlex
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench  # noqa: E402
import flops  # noqa: E402
import ode_bound  # noqa: E402
import profile_step  # noqa: E402
import sample_quality  # noqa: E402
import solver_error  # noqa: E402

from experiments.configs import base  # noqa: E402
from helpers_train import tiny_config  # noqa: E402
from vdm_jax import checkpoint, data, evaluation, parallel, training  # noqa: E402
from vdm_jax import config as config_lib  # noqa: E402
from vdm_jax import model as model_lib  # noqa: E402

TINY = ["--config=small", "--set", "model.vdm_unet.n_embd=8", "--set", "model.vdm_unet.n_layer=1"]


@pytest.mark.parametrize("name,params", [("small", 1_324_481), ("paper", 30_577_539)])
def test_reference_configs_have_the_documented_parameter_counts(name, params):
  model = config_lib.resolve(bench.CONFIGS[name](), num_devices=1).model.build()
  shapes = jax.eval_shape(lambda k: model_lib.init_variables(model, k)["params"],
                          jax.random.PRNGKey(0))
  assert model_lib.param_count(shapes["network"]) == params
  assert model_lib.param_count(shapes["gamma_module"]) == 2   # learned linear schedule


def _paths(tree, prefix=""):
  return {p for k, v in tree.items()
          for p in (_paths(v, f"{prefix}{k}.") if hasattr(v, "items") else {f"{prefix}{k}"})}


@pytest.mark.parametrize("name", sorted(bench.CONFIGS))
def test_configs_are_base_plus_overrides(name):
  # No second copy of the config layout: every config has exactly base.py's fields.
  assert _paths(bench.CONFIGS[name]()) == _paths(base.get_config())


def _namespace(**kwargs):
  defaults = dict(config="small", workdir=None, batch_size=None, dtype=None, remat=None,
                  scan=None, set=None)
  return bench.argparse.Namespace(**{**defaults, **kwargs})


def test_workdir_config_json_is_the_runs_own(tmp_path):
  run = bench.build_config(_namespace(set=["model.vdm_unet.n_layer=1", "training.batch_size=16"]))
  (tmp_path / "config.json").write_text(run.to_json())
  assert bench.build_config(_namespace(config="paper", workdir=str(tmp_path))) == run
  resized = bench.build_config(_namespace(config="paper", workdir=str(tmp_path), batch_size=4))
  assert resized.training.batch_size == 4 and resized.model == run.model


def test_train_benchmark_reports_a_finite_step_and_consistent_throughput(tmp_path):
  out = tmp_path / "runs.jsonl"
  res = bench.main([*TINY, "--what=train", "--batch_size=4", "--steps=2", "--warmup=0",
                    f"--out={out}"])
  for key in ("device", "compile_s", "step_s", "images_per_s", "peak_rss_mib", "param_count"):
    assert key in res, key
  assert res["device"].startswith("cpu") and res["batch_size"] == 4 and res["remat"] is True
  assert res["loss_finite"] and res["compile_s"] > 0 and res["peak_rss_mib"] > 0
  assert res["images_per_s"] == pytest.approx(4 / res["step_s"], rel=1e-3)
  assert res["step_s_stats"]["n"] == 2
  assert out.read_text().count("\n") == 1
  per_image = res["model_gflops_per_image"]
  counted = flops.network_flops_per_image(bench.build_config(bench.make_parser().parse_args(
      [*TINY, "--batch_size=4"])).model.build())
  assert per_image["train"] == pytest.approx(counted["train"] / 1e9, rel=1e-5)
  assert res["model_tflops_per_s"] == pytest.approx(
      counted["train"] * res["images_per_s"] / 1e12, rel=1e-3)
  assert res["mfu"] is None                       # no tabulated peak for a CPU


def test_sample_benchmark_times_each_sampler_per_step(tmp_path):
  res = bench.main([*TINY, "--what=sample", "--sample_T=3", "--sample_batch=2",
                    "--sample_repeats=1", f"--png={tmp_path / 'g.png'}"])
  assert set(res["sample_step_s"]) == {"ancestral", "ddim"}
  for name, s in res["samplers"].items():
    assert s["sample_step_s"] == pytest.approx(s["chain_s"] / 3, rel=1e-3), name
    assert s["s_per_image"] == pytest.approx(s["chain_s"] / 2, rel=1e-3), name
  assert sorted(Path(p).name for p in res["png"]) == ["g_ancestral_T3.png", "g_ddim_T3.png"]
  assert all(Path(p).stat().st_size > 0 for p in res["png"])


def test_eval_benchmark_counts_images():
  res = bench.main([*TINY, "--what=eval", "--eval_batch_size=4", "--eval_batches=2",
                    "--eval_repeats=1"])
  assert res["eval_batch_size"] == 4 and res["batch_size"] == 4
  assert res["eval_images_per_s"] == pytest.approx(8 / (2 * res["step_s"]), rel=1e-3)
  # Uniformly random bytes: no model beats their entropy, 8 bits per dimension, in expectation
  # (8 images x 784 dimensions: the estimate's noise is far below 0.5 bpd).
  assert res["bpd_of_random_images"] > 7.5


def test_profile_step_attributes_time_to_ops():
  res = profile_step.main([*TINY, "--part=forward", "--batch_size=2", "--steps=1",
                           "--trace_calls=1", "--top=5"])
  assert res["convolutions"] > 0 and res["median_s"] > 0
  assert 0 < len(res["top_ops_s"]) <= 5
  assert sum(res["by_kind_s"].values()) > 0


@pytest.mark.parametrize("item,message", [
    ("model.vdm_unet.n_layr=2", "has no key 'n_layr'"),
    ("modle.x=1", "the config has no key 'modle'"),
    ("model.vdm_unet.n_layer=two", "n_layer"),
    # Past the keys, the values get config.resolve's checks.
    ("model.dtype='float16'", "config.model.dtype must be one of 'float32', 'bfloat16'"),
    ("training.batch_size=0", "config.training.batch_size must be an int >= 1"),
    ("data.name='cifar10'", "does not match dataset 'cifar10'"),
])
def test_bad_overrides_are_refused_with_the_valid_keys(item, message):
  with pytest.raises(SystemExit, match=message):
    bench.build_config(_namespace(set=[item]))


def test_overrides_and_flags_reach_the_resolved_spec():
  spec = bench.build_config(_namespace(batch_size=4, dtype="bfloat16", remat=False, scan=False,
                                       set=["model.vdm_unet.n_layer=1"]))
  assert isinstance(spec, config_lib.RunSpec) and spec.training.batch_size == 4
  assert spec.eval.batch_size == 64 and spec.model.dtype == "bfloat16"
  net = dict(spec.model.network_kwargs)
  assert (net["n_layer"], net["n_embd"], net["remat"], net["scan"]) == (1, 64, False, False)


def test_documented_benchmark_commands_parse():
  root = Path(__file__).resolve().parents[1]
  text = (root / "README.md").read_text() + (root / "benchmarks" / "README.md").read_text()
  commands = [c for c in re.findall(r"python benchmarks/bench\.py ([^\n#`]*)", text)
              if "--help" not in c]
  assert len(commands) >= 6
  for line in commands:
    args = bench.make_parser().parse_args(shlex.split(line))
    assert args.config in bench.CONFIGS


def test_documented_ablation_overrides_reach_the_network():
  text = (Path(__file__).resolve().parents[1] / "benchmarks" / "README.md").read_text()
  items = re.findall(r"--set (model\.vdm_unet\.\w+=\w+)", text)
  assert "model.vdm_unet.fast_conv_grad=False" in items
  for item in items:
    spec = bench.build_config(bench.make_parser().parse_args(["--config=small", "--set", item]))
    network = spec.model.build().network
    key, value = item.split(".")[-1].split("=")
    assert getattr(network, key) == ast.literal_eval(value), item


@pytest.mark.parametrize("flag", ["--steps", "--sample_repeats", "--sample_T", "--eval_batches"])
def test_counts_below_one_are_refused(flag, capsys):
  with pytest.raises(SystemExit):
    bench.make_parser().parse_args(["--config=small", flag, "0"])
  assert "expected an integer >= 1, got '0'" in capsys.readouterr().err


def _score_net_flops(H, W, C, n, L, num_freqs):
  """Matrix-product FLOPs of VDMScoreNet (no block attention) for one image, by hand."""
  P, c_in = H * W, C * (1 + 2 * num_freqs)

  def resnet(a, b):
    return 2 * P * 9 * a * b + 2 * 4 * n * b + 2 * P * 9 * b * b + (2 * P * a * b if a != b else 0)

  embed = 2 * n * 4 * n + 2 * 4 * n * 4 * n
  attention = 4 * 2 * P * n * n + 2 * 2 * P * P * n        # q, k, v, proj; q k^T and weights v
  return (embed + 2 * P * 9 * c_in * n + L * resnet(n, n) + 2 * resnet(n, n) + attention
          + (L + 1) * resnet(2 * n, n) + 2 * P * 9 * n * C)


@pytest.mark.parametrize("overrides", [
    {}, {"scan": False}, {"remat": True}, {"fast_conv_grad": False}])
def test_model_flops_follow_the_network_by_hand_whatever_scan_remat_and_conv(overrides):
  spec = bench.build_config(_namespace(set=["model.vdm_unet.n_embd=16", "model.vdm_unet.n_layer=3"]
                                       + [f"model.vdm_unet.{k}={v}" for k, v in overrides.items()]))
  counted = flops.network_flops_per_image(spec.model.build())
  assert counted["forward"] == _score_net_flops(28, 28, 1, 16, 3, 2)


def test_train_flops_are_the_matrix_products_of_the_gradient():
  """'train' (3x forward) against the matrix products JAX's own gradient of the network does
  (with respect to parameters, z and gamma: every product's two transposes), counted in its
  jaxpr; without remat, which would recompute the forward pass."""
  spec = bench.build_config(_namespace(set=[
      "model.vdm_unet.n_embd=16", "model.vdm_unet.n_layer=3", "model.vdm_unet.remat=False",
      "model.vdm_unet.fast_conv_grad=False"]))
  model = spec.model.build()
  variables = jax.eval_shape(lambda k: model_lib.init_variables(model, k), jax.random.PRNGKey(0))
  z = jax.ShapeDtypeStruct((1, 28, 28, 1), jnp.float32)
  g = jax.ShapeDtypeStruct((1,), jnp.float32)
  grad = jax.make_jaxpr(jax.grad(
      lambda v, z, g: jnp.sum(model.apply(v, z, g, method=model.eps)), argnums=(0, 1, 2)))(
          variables, z, g)
  assert flops.network_flops_per_image(model)["train"] == flops.jaxpr_flops(grad.jaxpr)


def test_paper_network_flops_and_mfu():
  spec = config_lib.resolve(bench.CONFIGS["paper"](), num_devices=1)
  forward = flops.network_flops_per_image(spec.model.build())["forward"]
  assert forward == _score_net_flops(32, 32, 3, 128, 32, 2) == 53_369_896_960
  assert flops.mfu(989.4e12 / 2, "NVIDIA H200", "bfloat16") == pytest.approx(0.5)
  assert flops.mfu(494.7e12, "NVIDIA H100 80GB HBM3", "float32") == pytest.approx(1.0)
  assert flops.mfu(1e12, "cpu", "float32") is None


def test_documented_ode_bound_commands_parse():
  """Every `ode_bound.py` command in the READMEs and its docstring (continuation lines joined,
  the shard loop's $k as 0) parses, with a valid --shard."""
  root = Path(__file__).resolve().parents[1]
  text = "".join((root / f).read_text() for f in ("README.md", "benchmarks/README.md",
                                                  "benchmarks/ode_bound.py"))
  text = re.sub(r"\\\n\s*", " ", text).replace("$k", "0")
  commands = [c for c in re.findall(r"python benchmarks/ode_bound\.py ([^\n#`&;]*)", text)
              if "..." not in c]
  assert len(commands) >= 3
  for line in commands:
    args = ode_bound.make_parser().parse_args(shlex.split(line.replace("[", "").replace("]", "")))
    assert args.workdir and args.out and args.num_images == 1000, line
    ode_bound.parse_shard(args.shard)


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_ode_bound_resumes_with_the_same_numbers_and_summarizes_them(tmp_path):
  spec = config_lib.resolve(tiny_config())
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(spec.to_json())
  state = training.create_state(spec.model.build(), training.make_optimizer(spec.optimizer, 2),
                                0, parallel.make_mesh())
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  ckpt.save(0, state)
  ckpt.close()
  out = tmp_path / "ode.jsonl"
  args = [f"--workdir={workdir}", f"--out={out}", "--num_images=4", "--batch_size=2",
          "--rtol=1e-2", "--atol=1e-2", "--elbo_time_samples=2"]
  first = ode_bound.main(args)
  lines = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["batch"] for r in lines] == [0, 1] and first["images_done"] == 4
  # A random order of the first 4 images, each once.
  assert sorted(i for r in lines for i in r["indices"]) == [0, 1, 2, 3]
  ode_bpd = np.concatenate([r["ode_bpd"] for r in lines])
  elbo_bpd = np.concatenate([r["elbo_bpd"] for r in lines])
  assert first["ode_bpd"] == pytest.approx(ode_bpd.mean(), rel=1e-12)
  assert first["ode_bpd_se"] == pytest.approx(ode_bpd.std(ddof=1) / math.sqrt(4), rel=1e-12)
  assert first["ode_minus_elbo_bpd"] == pytest.approx((ode_bpd - elbo_bpd).mean(), rel=1e-12)
  assert first["evals_per_image_min"] >= 7          # at least one Tsit5 step (6 + 1)

  # The ELBO column is `evaluation.per_example_loss` of batch b's key, in bits per dimension.
  images = data.load_arrays("fashion_mnist", "test")[0][np.asarray(lines[0]["indices"])]
  key_elbo = jax.random.split(jax.random.fold_in(jax.random.key(0), 0))[1]
  loss = jax.jit(lambda v, x, k: evaluation.per_example_loss(
      spec.model.build(), v, x, None, k, T=0, num_time_samples=2))(
          {"params": state.ema_params}, images, key_elbo)
  np.testing.assert_allclose(lines[0]["elbo_bpd"],
                             (loss.recon + loss.prior + loss.diffusion) / (784 * math.log(2)),
                             rtol=1e-5)

  # Two shards appending to one file: each computes only its batches, to the same numbers, and
  # each summary counts every batch in the file.
  sharded = tmp_path / "sharded.jsonl"
  shard_args = [a for a in args if not a.startswith("--out=")] + [f"--out={sharded}"]
  assert ode_bound.main([*shard_args, "--shard=1/2"])["images_done"] == 2
  assert [json.loads(line)["batch"] for line in sharded.read_text().splitlines()] == [1]
  assert ode_bound.main([*shard_args, "--shard=0/2"])["ode_bpd"] == first["ode_bpd"]
  by_batch = {json.loads(line)["batch"]: json.loads(line) for line in
              sharded.read_text().splitlines()}
  for old in lines:
    for k in ("indices", "ode_bpd", "elbo_bpd", "num_evals"):
      assert by_batch[old["batch"]][k] == old[k], k
  with pytest.raises(SystemExit, match="--shard must be K/N with 0 <= K < N"):
    ode_bound.main([*shard_args, "--shard=2/2"])

  # Killed while writing its second line: the rerun drops the cut line and computes only that
  # batch, to the same numbers.
  cut = json.dumps(lines[0]) + "\n" + json.dumps(lines[1])[:50]
  out.write_text(cut)
  assert ode_bound.main([*args, "--summary_only"])["images_done"] == 2
  assert out.read_text() == cut                  # a summary leaves the file as it is
  again = ode_bound.main(args)
  relines = [json.loads(line) for line in out.read_text().splitlines()]
  for old, new in zip(lines, relines, strict=True):
    for k in ("batch", "indices", "ode_bpd", "elbo_bpd", "num_evals"):
      assert new[k] == old[k], k
  assert again["ode_bpd"] == first["ode_bpd"] and again["step"] == first["step"] == 0
  assert ode_bound.main([*args, "--summary_only"])["elbo_bpd"] == first["elbo_bpd"]
  # Other settings, or a newer checkpoint of the run, would mix two experiments in one file.
  with pytest.raises(SystemExit, match="not .*pass another --out"):
    ode_bound.main([*args[:-1], "--elbo_time_samples=3"])
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  ckpt.save(5, state.replace(step=state.step + 5))
  ckpt.close()
  with pytest.raises(SystemExit, match="step 0, but the run's latest checkpoint is step 5"):
    ode_bound.main(args)
  # A damaged line that is not the last is an error naming it, not silently skipped.
  out.write_text("{not json\n" + json.dumps(lines[1]) + "\n")
  with pytest.raises(SystemExit, match="line 1: not a record"):
    ode_bound.main([*args, "--summary_only"])


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_sample_quality_rows_start_from_one_noise_and_the_floor_beats_an_untrained_model(
    tmp_path):
  spec = config_lib.resolve(tiny_config(**{
      "sample_eval.num_samples": 12, "sample_eval.max_features": 12,
      "sample_eval.kid_subsets": 3, "sample_eval.kid_subset_size": 6,
      "sample_eval.per_device_batch": 1, "sample_eval.cache_dir": str(tmp_path / "cache")}))
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(spec.to_json())
  state = training.create_state(spec.model.build(), training.make_optimizer(spec.optimizer, 2),
                                0, parallel.make_mesh())
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  ckpt.save(0, state)
  ckpt.close()
  out = tmp_path / "rows.jsonl"
  rows = sample_quality.main([f"--workdir={workdir}", "--num_samples=12", "--rows=ddim:2,ancestral:2",
                              "--floor", f"--reference_workdir={workdir}", f"--out={out}"])
  by_row = {r["row"]: r for r in rows}
  assert [json.loads(line)["row"] for line in out.read_text().splitlines()] == [
      "floor: training images", "reference run, ddim:2", "ddim:2", "ancestral:2"]
  # The reference run is this run again with the same sampler: the same samples, the same FD.
  assert by_row["reference run, ddim:2"]["fd"] == by_row["ddim:2"]["fd"]
  assert by_row["ddim:2"]["nfe"] == 2
  assert by_row["ancestral:2"]["fd"] != by_row["ddim:2"]["fd"]
  # Training images against the test split score better than an untrained network's samples.
  floor = by_row["floor: training images"]
  assert floor["fd"] < min(by_row["ddim:2"]["fd"], by_row["ancestral:2"]["fd"])
  assert floor["recall"] > by_row["ddim:2"]["recall"]
  for r in rows[1:]:
    assert r["num_samples"] == 12 and 0 <= r["precision"] <= 1 and 0 <= r["recall"] <= 1


@pytest.mark.heavy   # a whole run end to end: minutes on 2 CPU cores
def test_solver_error_is_zero_where_every_solver_is_exact(tmp_path):
  # An untrained network predicts eps = 0 (zero-initialised output layer), so the flow is
  # z_t = z_1 alpha_t / alpha_1: every solver ends at x_0 = z_1 / alpha_1 exactly, the ODE to
  # its tolerance.
  spec = config_lib.resolve(tiny_config())
  workdir = tmp_path / "run"
  (workdir / "checkpoints").mkdir(parents=True)
  (workdir / "config.json").write_text(spec.to_json())
  state = training.create_state(spec.model.build(), training.make_optimizer(spec.optimizer, 2),
                                0, parallel.make_mesh())
  ckpt = checkpoint.Checkpointer(workdir / "checkpoints")
  ckpt.save(0, state)
  ckpt.close()
  rows = solver_error.main([f"--workdir={workdir}", "--num_images=2", "--solvers=ddim,unipc",
                            "--spacings=uniform_t,karras", "--evals=2,3", "--ref_tol=1e-4",
                            "--check_tol=1e-5", "--check_images=1"])
  assert [r["row"] for r in rows[1:]] == [f"{s}/{p}/{e}" for s in ("ddim", "unipc")
                                          for p in ("uniform_t", "karras") for e in (2, 3)]
  # x_0 is about 12 N(0, 1) in data units (1 / alpha_1 with gamma_max = 5), ~1200 pixels: the
  # ODE at 1e-4 is off by ~1e-4 of that; the exact solvers all differ from it by that much.
  errors = [r["error_px"] for r in rows[1:]]
  assert rows[0]["check_error_px"] < 1.0 and max(errors) < 1.0
  assert max(errors) - min(errors) < 5e-3, errors
