"""One process of the 2-process test of `training.sample_eval` (tests/test_training_sample_eval.py).

    python tests/helpers_sample_eval_process.py <port> <process_id> <cache_dir> <out.json>

Joins a 2-process run on 127.0.0.1:<port> (2 CPU devices each), evaluates the sample quality
of the tiny model's initial parameters over all 4 devices (chunks of 4 x PER_DEVICE images)
and writes the result to out.json (process 0) or nothing (process 1).
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

NUM_SAMPLES, PER_DEVICE, SEED = 22, 2, 5   # chunks of 8 + 8 + 6: the last one cut short


def overrides(cache_dir: str, per_device: int) -> dict:
  return {"sample_eval.num_samples": NUM_SAMPLES, "sample_eval.T": 2,
          "sample_eval.max_features": 18, "sample_eval.kid_subsets": 4,
          "sample_eval.kid_subset_size": 8, "sample_eval.per_device_batch": per_device,
          "sample_eval.cache_dir": cache_dir, "model.num_classes": 10}


def main(port: int, process_id: int, cache_dir: str, out: str) -> None:
  from vdm_jax import parallel
  parallel.initialize_distributed(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                                  process_id=process_id, timeout_s=60)
  import jax
  from helpers_train import tiny_model_and_params
  from vdm_jax.training import sample_eval
  assert jax.process_count() == 2 and jax.device_count() == 4

  spec, model, params = tiny_model_and_params(**overrides(cache_dir, PER_DEVICE))
  evaluator = sample_eval.SampleEvaluator(spec, model)
  result = evaluator(model, params, parallel.make_mesh(), jax.random.PRNGKey(SEED))
  if process_id == 0:
    Path(out).write_text(json.dumps(result))


if __name__ == "__main__":
  main(int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4])
