"""Score networks eps_hat(z_t; cond, label).

Both networks share one call contract:

    eps_hat = net.apply(params, z, cond, label=None, train=False, rngs={'dropout': key})

z float [B, H, W, C] (`MLPScoreNet`: any [B, ...]); cond float [B], the log-SNR normalised to
[0, 1]; label int [B] or None; eps_hat float32 with z's shape. See `VDMScoreNet`, `UNet` and
`MLPScoreNet` for the attributes. `NoisyClassifier` (logits of p(y | z_t), for classifier
guidance) and `Classifier` (the feature network of clean images) are classifiers;
`KLAutoencoder` is latent diffusion's autoencoder and `CrossAttention` / `ClassContext` its
conditioning by cross-attention (the U-Net's label_conditioning="cross_attention").
"""
from vdm_jax.nets.layers import (AttnBlock, ConditioningEmbedding, GroupNorm, ResnetBlock,
                                 fourier_features, group_norm, null_labels, num_groups,
                                 timestep_embedding)
from vdm_jax.nets.autoencoder import KLAutoencoder
from vdm_jax.nets.classifier import Classifier
from vdm_jax.nets.cross_attention import ClassContext, CrossAttention
from vdm_jax.nets.mlp import MLPScoreNet
from vdm_jax.nets.noisy_classifier import NoisyClassifier
from vdm_jax.nets.unet import UNet
from vdm_jax.nets.vdm_unet import VDMScoreNet, unscanned_to_scanned

__all__ = [
    "VDMScoreNet", "UNet", "MLPScoreNet", "Classifier", "NoisyClassifier", "KLAutoencoder",
    "CrossAttention", "ClassContext",
    "unscanned_to_scanned", "ResnetBlock", "AttnBlock",
    "ConditioningEmbedding", "GroupNorm", "timestep_embedding", "fourier_features", "num_groups",
    "group_norm", "null_labels",
]
