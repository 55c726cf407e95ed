"""The feature network of `vdm_jax.metrics.load_feature_network("fashion_mnist")`.

    python -m experiments.train_classifier \\
        --config=experiments/configs/classifier_fashion_mnist.py --workdir=/tmp/classifier

writes /tmp/classifier/classifier.npz (the weights) and /tmp/classifier/result.json (test
accuracy, sha256, timings). Shipping a new network: copy the .npz to
vdm_jax/metrics/weights/fashion_mnist_classifier.npz and put its sha256 into
vdm_jax/metrics/features.py.

Hardware: 2 CPU cores, no accelerator. `nets.Classifier` with widths (32, 64), 128 features,
no normalisation, dropout 0.1 on the features; AdamW 3e-3, weight decay 1e-4, warm-up then
cosine decay; batch 128 for 12 epochs (5616 steps), random horizontal flips and shifts of up to
1 pixel.

Result (measured on a 2-core CPU VM, jax 0.10.2, this exact command): test accuracy 92.38%
(9238 of 10,000; 92.9% on the first 1,000), 468,682 parameters, 8m39s of wall time (504 s of
training); weights 1.88 MB, sha256 7e8011e6411f58b6a304083f911c62a252634261f58ee1a8f3f590958aea09e1.

MNIST: --config.data.name=mnist (flips are then off by default: a mirrored digit is another
shape).
"""
import ml_collections

placeholder = ml_collections.config_dict.placeholder


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                      # every random choice: init, data order, augmentation, dropout
  c.data = dict(
      name="fashion_mnist",       # a vdm_jax.data dataset of 28x28x1 (or other) 8-bit images
      data_dir=placeholder(str),  # searched first for the files; None: VDM_DATA_DIR, system dirs
      # Random horizontal flips. None: only for datasets whose mirror images keep their class
      # (experiments.train_classifier.FLIP_INVARIANT: fashion_mnist, cifar10).
      flip=placeholder(bool),
      max_shift=1,                # random translation by up to this many pixels (zero fill)
  )
  c.model = dict(                 # nets.Classifier attributes (num_classes, image_shape: data)
      widths=(32, 64),
      feature_dim=128,
      group_norm=False,
      dropout=0.1,
  )
  c.optimizer = dict(
      lr=3e-3,                    # peak learning rate of AdamW
      weight_decay=1e-4,          # decoupled, on every parameter
      b1=0.9,
      b2=0.999,
      warmup_steps=200,           # linear from 0, then cosine decay to 0 at num_steps
      grad_clip=1.0,              # global gradient norm; 0: no clipping
  )
  c.training = dict(
      batch_size=128,
      num_epochs=12,              # of the train split (incomplete last batch dropped)
      num_steps=0,                # > 0: exactly this many steps instead of num_epochs
      log_every=100,
      eval_batch_size=1000,
  )
  return c
