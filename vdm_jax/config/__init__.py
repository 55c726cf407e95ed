"""The run's config, validated once and resolved into frozen, typed specs.

    from vdm_jax import config as config_lib
    spec = config_lib.resolve(config)        # ml_collections.ConfigDict -> RunSpec; raises early
    model = spec.model.build()               # model.VDM

`experiments/configs/base.py` holds every field with its default; this module holds every check.
A config is read here and nowhere else: the training system takes the specs (`RunSpec` and its
parts), never the ConfigDict. `resolve` raises ValueError (or TypeError) naming the field, what
was wrong and what to set, before any data is read or anything is compiled or written.

Groups and their specs: data -> DataSpec, model -> ModelSpec (with one sub-group per network,
e.g. model.unet; only the chosen network's is read), training -> LoopSpec, optimizer ->
OptimizerSpec, eval -> EvalSpec, sampling -> SamplingSpec, sample_eval -> SampleEvalSpec. `RunSpec.to_dict()` is the resolved
config again (what a run writes to config.json), and `from_json` reads that back.

The specs are in `config.specs`, the reading and the checks in `config.reading`.
"""
from vdm_jax.config.specs import (  # noqa: F401
    AUTOENCODER_NETWORK, CLASSIFIER_NETWORK, DECAYS, DTYPES, NETWORK_CLASSES, NOT_DIFFUSION,
    WEIGHT_DECAY_MASKS, DataSpec, EvalSpec,
    LoopSpec, ModelSpec, OptimizerSpec, RunSpec, SampleEvalSpec, SamplingSpec)
from vdm_jax.config.reading import from_json, resolve  # noqa: F401
