#!/usr/bin/env bash
# The accelerator benchmarks in one call (about 8 minutes on one H100/H200), as JSON lines.
#
#   bash benchmarks/gpu_suite.sh                       # results to benchmarks/results/<kind>.jsonl
#   OUT=/some/dir bash benchmarks/gpu_suite.sh         # ... to /some/dir/gpu_suite.jsonl instead
#   VDM_SUITE_TINY=1 bash benchmarks/gpu_suite.sh      # the same steps at toy sizes (a CPU check)
#
# Steps, each appending one JSON object per measurement as soon as it is done:
#   1. paper network (30.6M), batch 128, remat off: train step in float32 and in bfloat16
#      (images/s, compile, model TFLOP/s, MFU: benchmarks/bench.py);
#   2. small network (1.3M), batch 128: train step; reverse-chain seconds per step (16 images);
#   3. the quickstart main job, end to end (the README's command): wall seconds and test bpd;
#      then its checkpoint on the first 1000 test images: the ELBO and the bound through the
#      probability-flow ODE (rtol = atol = 1e-5: looser tolerances leave the bound off by tenths
#      of a bit per dim, see the README), each in bpd +- s.e.;
#   4. fashion_mnist.py for a fixed budget of $VDM_SUITE_STEPS steps (default 3000) in float32 and
#      in bfloat16, each ending with the whole test set's bpd +- s.e.
# No network is needed: bench.py uses random images; the training runs read Fashion-MNIST from
# $VDM_DATA_DIR (or the usual local folders) or the download cache.
# Packages missing on the machine can come as wheels in $VDM_WHEELS (default .whl, if present).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1

WHEELS=${VDM_WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/vdm_site "$WHEELS"/*.whl || exit 1
  export PYTHONPATH="/tmp/vdm_site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

kind=$(python3 -c "import jax; print(jax.devices()[0].device_kind.replace(' ', '_'))") || exit 1
if [ -n "${OUT:-}" ]; then
  results="$OUT/gpu_suite.jsonl"
else
  mkdir -p benchmarks/results && results="benchmarks/results/${kind}.jsonl"
fi
work=$(mktemp -d /tmp/vdm_suite.XXXXXX)
steps=${VDM_SUITE_STEPS:-3000}
echo "results: $results"

# Records one JSON line: the date, the command's label and jax's version come with every line.
note() {  # note <label> <json object>
  python3 - "$1" "$2" "$results" <<'EOF'
import datetime, json, sys
import jax
label, record, path = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
record = {"suite_step": label, "date": datetime.date.today().isoformat(),
          "jax": jax.__version__, "device_kind": jax.devices()[0].device_kind, **record}
line = json.dumps(record)
print(line, flush=True)
with open(path, "a") as f:
  f.write(line + "\n")
EOF
}

bench() {  # bench <label> <bench.py arguments...>
  local label=$1; shift
  local line
  if line=$(python3 benchmarks/bench.py "$@" | tail -n 1); then
    note "$label" "$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["command"] = sys.argv[2]; print(json.dumps(r))' "$line" "python benchmarks/bench.py $*")"
  else
    note "$label" "{\"error\": \"bench.py $* failed\"}"
  fi
}

train() {  # train <label> <workdir> <experiments.train arguments...>: wall time and final eval
  local label=$1 workdir=$2; shift 2
  local t0=$(date +%s.%N)
  if python3 -m experiments.train --workdir="$workdir" "$@" > "$workdir.log" 2>&1; then
    local t1=$(date +%s.%N)
    note "$label" "$(python3 - "$workdir" "$t0" "$t1" "python -m experiments.train --workdir=$workdir $*" <<'EOF'
import json, sys
from vdm_jax import logging_utils
workdir, t0, t1, command = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
records = logging_utils.read_metrics(workdir)
train = [r for r in records if "train/bpd" in r]
evals = [r for r in records if "eval/bpd" in r]
out = {"command": command, "wall_s": round(t1 - t0, 1), "steps": train[-1]["step"],
       "train_images_per_s": train[-1].get("images_per_s"),
       "test_bpd": evals[-1]["eval/bpd"], "test_bpd_se": evals[-1]["eval/bpd_se"],
       "test_images": evals[-1]["eval/num_images"]}
print(json.dumps(out))
EOF
)"
  else
    note "$label" "{\"error\": \"experiments.train failed\", \"log_tail\": $(tail -c 1500 "$workdir.log" | python3 -c 'import json, sys; print(json.dumps(sys.stdin.read()))')}"
  fi
}

evaluate() {  # evaluate <label> <workdir> <experiments.train arguments...>: --mode=eval's record
  local label=$1 workdir=$2; shift 2
  local t0=$(date +%s.%N) line
  if line=$(python3 -m experiments.train --mode=eval --workdir="$workdir" "$@" 2> "$workdir.eval.log" | tail -n 1); then
    local t1=$(date +%s.%N)
    note "$label" "$(python3 -c 'import json, sys; r = json.loads(sys.argv[1]); r["command"] = sys.argv[2]; r["wall_s"] = round(float(sys.argv[4]) - float(sys.argv[3]), 1); print(json.dumps(r))' "$line" "python -m experiments.train --mode=eval --workdir=$workdir $*" "$t0" "$t1")"
  else
    note "$label" "{\"error\": \"experiments.train --mode=eval failed\"}"
  fi
}

if [ -n "${VDM_SUITE_TINY:-}" ]; then
  # Toy sizes: checks that every step runs and records, in a few minutes on a CPU.
  paper=(--config=paper --batch_size=2 --steps=1 --warmup=0 --set model.vdm_unet.n_embd=8 --set model.vdm_unet.n_layer=1)
  small=(--config=small --batch_size=4 --steps=1 --warmup=0 --set model.vdm_unet.n_embd=8 --set model.vdm_unet.n_layer=1)
  sample=(--config=small --what=sample --sample_T=2 --sample_batch=2 --sample_repeats=1 --samplers=ancestral --set model.vdm_unet.n_embd=8 --set model.vdm_unet.n_layer=1)
  quick=(--config=experiments/configs/quickstart.py --config.training.num_steps=4 --config.training.checkpoint_every=0 --config.eval.max_batches=1 --config.eval.batch_size=200 --config.sampling.T=2 --config.sampling.num_samples=4)
  first=(--config.eval.batch_size=4 --config.eval.max_batches=1)
  fm=(--config=experiments/configs/fashion_mnist.py --config.training.num_steps=2 --config.training.batch_size=4 --config.model.unet.ch=8 --config.model.unet.attn_resolutions=\(\) --config.eval.max_batches=1 --config.eval.batch_size=100 --config.eval.num_time_samples=1 --config.sampling.T=2 --config.sampling.num_samples=4 --config.training.sample_every=0 --config.training.checkpoint_every=0)
else
  paper=(--config=paper --batch_size=128 --remat=false --steps=10 --warmup=2)
  small=(--config=small --batch_size=128 --remat=false --steps=20 --warmup=2)
  sample=(--config=small --what=sample --sample_T=100 --sample_batch=16 --sample_repeats=3)
  quick=(--config=experiments/configs/quickstart.py)
  first=(--config.eval.batch_size=1000 --config.eval.max_batches=1)
  fm=(--config=experiments/configs/fashion_mnist.py --config.training.num_steps=$steps --config.training.eval_every=0 --config.training.sample_every=0 --config.training.checkpoint_every=0 --config.eval.num_time_samples=1)
fi

bench paper_train_float32 "${paper[@]}" --dtype=float32
bench paper_train_bfloat16 "${paper[@]}" --dtype=bfloat16
bench small_train_float32 "${small[@]}"
bench small_sample "${sample[@]}"
train quickstart "$work/quickstart" "${quick[@]}"
evaluate quickstart_elbo_first_1000 "$work/quickstart" "${quick[@]}" "${first[@]}"
evaluate quickstart_ode_first_1000 "$work/quickstart" "${quick[@]}" "${first[@]}" \
  --config.eval.method=ode --config.eval.rtol=1e-5 --config.eval.atol=1e-5
train fashion_mnist_float32 "$work/fm_float32" "${fm[@]}" --config.model.dtype=float32
train fashion_mnist_bfloat16 "$work/fm_bfloat16" "${fm[@]}" --config.model.dtype=bfloat16
echo "done: $results"
