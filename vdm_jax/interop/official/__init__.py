"""The official VDM code's models and checkpoints (github.com/google-research/vdm) in vdm_jax.

    from vdm_jax.interop import official
    model, variables = official.convert(official_variables, official_model_config)
    model, variables, meta = official.load_checkpoint("<workdir>/checkpoints-0", config)
    eps_hat = model.apply(variables, z, gamma_t, method=model.eps)
    gamma = model.apply(variables, t, method=model.gamma)

`official_model_config` holds the fields of the official `VDMConfig` (`MODEL_FIELDS`: its
configs' `config.model` group), as a dict or any object with those attributes. The returned
`model.VDM` computes, to float32 rounding,

    model.eps(z, gamma_t)  == official score_model(z, gamma_t, conditioning=0, deterministic=True)
    model.gamma(t)         == official gamma(t)

and hence the same bound (`model.VDM.__call__`) and samplers: conditioning 0 is what the
official code feeds for un-augmented data and in sampling.

The official score network is `nets.VDMScoreNet` with `OFFICIAL_NETWORK` (an extra zero input to
the conditioning MLP, a bias in the attention keys, 32 GroupNorm groups everywhere; z added to
the output as its "base measure"), so parameter counts are equal (the paper's CIFAR-10 network:
30,578,181 with its learnable_scalar schedule). Layers map one to one:

    official score_model            vdm_jax network (nn.scan layout: a leading layer axis)
    dense0, dense1                  cond_embed/dense0, cond_embed/dense1
    conv_in, conv_out               conv_in, conv_out
    GroupNorm_0 (output head)       norm_out
    down.block_<i>, down.attn_<i>   down/block, down/attn        (entry i of the stack)
    mid.block_1, mid.attn_1, .._2   mid_block1, mid_attn, mid_block2
    up.block_<i>, up.attn_<i>       up/block, up/attn
    in a block: GroupNorm_0, conv1, cond_proj, GroupNorm_1, conv2, nin_shortcut
                -> norm1, conv1, cond_proj, norm2, conv2, nin_shortcut
    in an attention block: GroupNorm_0, q, k, v, proj_out -> norm, q, k, v, proj_out

Schedules (`GAMMA_TYPES`), each an exact reparameterisation of the official one:
  fixed            -> fixed_linear (no parameters).
  learnable_scalar -> learned_linear: gamma = b + |w| t is gamma_min + softplus(log_range) t with
                      gamma_min = b, log_range = softplus^-1(|w|).
  learnable_nnet   -> monotone_net: the official gamma(t) = l1(t) + l3(2 sigmoid(l2(2t - 1)) - 1)
                      / n (l1, l2, l3 with |weights|) equals the monotone net with the same l2,
                      l3 scaled by 2 / |l1 kernel|, and endpoints gamma(0), gamma(1).
The official `gamma_type="fixed"` cannot build its own model (its decoder gets a Python float
for gamma(0)); its variables are the score network's alone, and they convert here.
"""
from vdm_jax.interop.official.checkpoints import (  # noqa: F401
    find_checkpoint, load_checkpoint, read_train_state)
from vdm_jax.interop.official.layout import (  # noqa: F401
    FOURIER_FREQS, GAMMA_TYPES, MODEL_FIELDS, NNET_FEATURES, NORM_GROUPS, OFFICIAL_NETWORK,
    model_from_config, official_model_config, official_param_count, official_param_shapes,
    read_model_config)
from vdm_jax.interop.official.weights import convert  # noqa: F401
