"""Cross-attention: against a hand computation, masking, the null context, gradients, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vdm_jax import model as model_lib, nets
from vdm_jax.nets.cross_attention import ClassContext, CrossAttention


def _perturbed(variables, key, scale=0.3):
  """Random values for every parameter (the zero-initialised output projections included)."""
  leaves, treedef = jax.tree_util.tree_flatten(variables)
  keys = jax.random.split(key, len(leaves))
  return jax.tree_util.tree_unflatten(
      treedef, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)])


def _setup(heads=2, b=2, h=3, w=3, c=4, m=5, d=6):
  kx, kc, ki, kp = jax.random.split(jax.random.PRNGKey(0), 4)
  x = jax.random.normal(kx, (b, h, w, c))
  context = jax.random.normal(kc, (b, m, d))
  block = CrossAttention(num_heads=heads, norm_groups=2)
  variables = _perturbed(block.init(ki, x, context), kp)
  return block, variables, x, context


def test_cross_attention_matches_a_hand_computation():
  block, variables, x, context = _setup()
  out = block.apply(variables, x, context)
  assert out.shape == x.shape
  p = jax.tree_util.tree_map(np.asarray, variables["params"])
  b, c, heads = x.shape[0], x.shape[-1], 2
  xn = np.asarray(x, np.float64).reshape(b, -1, 2, 2)        # GroupNorm, 2 groups of 2
  xn = (xn - xn.mean(axis=(1, 3), keepdims=True)) / np.sqrt(
      xn.var(axis=(1, 3), keepdims=True) + 1e-6)
  hn = xn.reshape(b, -1, c) * p["norm"]["scale"] + p["norm"]["bias"]
  cn = np.asarray(context, np.float64)
  cn = (cn - cn.mean(-1, keepdims=True)) / np.sqrt(cn.var(-1, keepdims=True) + 1e-6)
  cn = cn * p["context_norm"]["scale"] + p["context_norm"]["bias"]
  q = hn @ p["q"]["kernel"] + p["q"]["bias"]
  k = cn @ p["k"]["kernel"]
  v = cn @ p["v"]["kernel"] + p["v"]["bias"]
  out_heads = []
  for i in range(heads):
    sl = slice(i * c // heads, (i + 1) * c // heads)
    logits = q[..., sl] @ np.swapaxes(k[..., sl], 1, 2) / np.sqrt(c // heads)
    wts = np.exp(logits - logits.max(-1, keepdims=True))
    wts /= wts.sum(-1, keepdims=True)
    out_heads.append(wts @ v[..., sl])
  attn = np.concatenate(out_heads, axis=-1) @ p["proj_out"]["kernel"] + p["proj_out"]["bias"]
  want = np.asarray(x, np.float64) + attn.reshape(x.shape)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-4, atol=1e-5)


def test_masked_tokens_are_ignored_and_an_all_masked_row_adds_nothing():
  block, variables, x, context = _setup()
  mask = jnp.array([[True, False, True, False, True], [False] * 5])
  out = block.apply(variables, x, context, mask)
  # Example 0 equals attending to its unmasked tokens only; their values do not matter.
  kept = block.apply(variables, x[:1], context[:1, jnp.array([0, 2, 4])])
  np.testing.assert_allclose(out[:1], kept, rtol=1e-5, atol=1e-6)
  changed = context.at[0, 1].set(100.0).at[0, 3].set(-7.0)
  np.testing.assert_allclose(block.apply(variables, x, changed, mask)[:1], out[:1], rtol=1e-6)
  # Example 1: nothing to attend to, the block is the identity there (and finite).
  np.testing.assert_allclose(out[1], x[1], rtol=1e-6)
  grads = jax.grad(lambda c: jnp.sum(block.apply(variables, x, c, mask)))(context)
  assert np.all(np.isfinite(np.asarray(grads)))
  assert float(jnp.max(jnp.abs(grads[0, 1]))) == 0.0


def test_cross_attention_refuses_bad_contexts():
  block, variables, x, context = _setup()
  with pytest.raises(ValueError, match=r"context must have shape \[batch, tokens, width\]"):
    block.apply(variables, x, context[0])
  with pytest.raises(ValueError, match=r"context must have shape"):
    block.apply(variables, x, context[:1])
  with pytest.raises(ValueError, match=r"mask must have shape \(2, 5\)"):
    block.apply(variables, x, context, jnp.ones((2, 4), bool))
  with pytest.raises(ValueError, match="mask must be boolean"):
    block.apply(variables, x, context, jnp.ones((2, 5), jnp.int32))


def _cross_unet(**kw):
  return nets.UNet(ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(), dropout=0.0,
                   num_classes=3, label_conditioning="cross_attention", context_dim=6,
                   context_tokens=2, cross_attn_heads=2, cross_attn_resolutions=(4,), **kw)


def test_unet_with_cross_attention_null_context_and_gradients():
  net = _cross_unet()
  z = jax.random.normal(jax.random.PRNGKey(1), (3, 8, 8, 1))
  cond = jnp.array([0.1, 0.5, 0.9])
  labels = jnp.array([0, 1, 3])                      # 3 = the null label
  variables = _perturbed(jax.jit(net.init)(jax.random.PRNGKey(2), z, cond, labels),
                         jax.random.PRNGKey(3), 0.1)
  names = set(variables["params"])
  assert {"class_context", "down1_cross0", "mid_cross", "up1_cross0"} <= names
  assert "label_embed" not in variables["params"]["cond_embed"]   # labels enter only by attention

  @jax.jit
  def outputs(variables):
    """The labels' output, the null context's (labels=None), a context given directly (the
    labels' own tokens, which it replaces), and the gradient of a loss on the first."""
    tokens = variables["params"]["class_context"]["tokens"]["embedding"][labels].reshape(3, 2, 6)
    loss = lambda p: jnp.sum(jnp.square(net.apply({"params": p}, z, cond, labels)))
    return (net.apply(variables, z, cond, labels), net.apply(variables, z, cond, None),
            net.apply(variables, z, cond, context=tokens, context_mask=jnp.ones((3, 2), bool)),
            jax.grad(loss)(variables["params"]))

  out, null, direct, grads = outputs(variables)
  assert out.shape == z.shape
  # labels=None is the null context: the null label's tokens.
  np.testing.assert_allclose(null[2], out[2], rtol=1e-6)
  assert float(jnp.max(jnp.abs(null[0] - out[0]))) > 1e-4
  np.testing.assert_allclose(direct, out, rtol=1e-5, atol=1e-6)
  # Gradients reach the class tokens of the labels used (not the unused class 2) and every block.
  g_tokens = np.asarray(grads["class_context"]["tokens"]["embedding"])
  assert np.all(np.abs(g_tokens[[0, 1, 3]]).max(axis=1) > 0) and np.all(g_tokens[2] == 0)
  for block in ("down1_cross0", "mid_cross", "up1_cross0"):
    assert float(jnp.max(jnp.abs(grads[block]["k"]["kernel"]))) > 0


def test_classifier_free_guidance_through_cross_attention():
  vdm = model_lib.VDM(network=_cross_unet(), image_shape=(8, 8, 1), num_classes=3,
                      label_dropout=0.2)
  x = jnp.zeros((2, 8, 8, 1), jnp.int32)
  params = _perturbed(jax.jit(vdm.init)({"params": jax.random.PRNGKey(0),
                                         "sample": jax.random.PRNGKey(1)},
                                        x, jnp.array([0, 1]))["params"], jax.random.PRNGKey(4), 0.1)
  eps_fn = jax.jit(model_lib.pure_fns(vdm, {"params": params})[0])
  z = jax.random.normal(jax.random.PRNGKey(5), (2, 8, 8, 1))
  g = jnp.array([-2.0, 1.0])
  cond = eps_fn(z, g, jnp.array([1, 1]))
  uncond = eps_fn(z, g, None)
  np.testing.assert_allclose(uncond, eps_fn(z, g, jnp.array([3, 3])), rtol=1e-5, atol=1e-6)
  assert float(jnp.max(jnp.abs(cond - uncond))) > 1e-4


def test_unet_cross_attention_settings_are_checked():
  z, cond = jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,))
  with pytest.raises(ValueError, match="label_conditioning must be"):
    nets.UNet(ch=8, ch_mult=(1,), label_conditioning="concat").init(jax.random.PRNGKey(0), z, cond)
  with pytest.raises(ValueError, match="without cross-attention"):
    nets.UNet(ch=8, ch_mult=(1,)).init(jax.random.PRNGKey(0), z, cond,
                                       context=jnp.zeros((1, 2, 3)))
  with pytest.raises(ValueError, match="needs a context, or num_classes > 0"):
    nets.UNet(ch=8, ch_mult=(1,), label_conditioning="cross_attention").init(
        jax.random.PRNGKey(0), z, cond)
  with pytest.raises(ValueError, match=r"context must have shape \[batch, tokens, width\] = \[1"):
    _cross_unet().init(jax.random.PRNGKey(0), z, cond, context=jnp.zeros((2, 2, 6)))


def test_class_context_null_rows():
  tau = ClassContext(num_classes=4, dim=3, num_tokens=2)
  params = tau.init(jax.random.PRNGKey(0), jnp.array([0]))
  ctx, mask = tau.apply(params, None, batch=2)
  table = params["params"]["tokens"]["embedding"]
  np.testing.assert_array_equal(ctx, jnp.broadcast_to(table[4].reshape(2, 3), (2, 2, 3)))
  assert ctx.shape == (2, 2, 3) and mask.dtype == jnp.bool_ and bool(mask.all())
  with pytest.raises(ValueError, match=r"integers of shape \[batch\]"):
    tau.apply(params, jnp.array([[0]]))
