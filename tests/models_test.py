"""Tests for m3video_jax/models (encoder, decoder, pretraining model)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from m3video_jax import losses
from m3video_jax import masking
from m3video_jax import targets
from m3video_jax.models import layers
from m3video_jax.models import m3video
from m3video_jax.models import vit

# Measured parameter counts of the encoders (patch embed + blocks + final norm).
ENCODER_PARAMS = {'mu': 198_336, 'S': 21_879_936, 'B': 86_227_200, 'L': 303_860_736}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _forward(model, train=False):
  """Jitted `(params, video, rng) -> pred` for the fixed mask `HIDDEN` (jit compiles faster than eager op-by-op)."""
  return jax.jit(lambda p, v, rng=None: model.apply(p, v, HIDDEN, train=train, num_hidden=2,
                                                    rngs=None if rng is None else {'dropout': rng}))


def _tiny_model(**kw):
  kw = dict(encoder_variant='mu', decoder_width=32, decoder_depth=1, decoder_heads=2, output_dims=(264,)) | kw
  return m3video.M3VideoPretrainer(**kw)


# Every test uses this clip shape and mask (2 x 2 x 2 tokens, one tube of 2 hidden): compiled ops are shared.
VIDEO_SHAPE = (2, 4, 32, 32, 3)
HIDDEN = np.array([[False, True, False, False, False, True, False, False],
                   [True, False, False, False, True, False, False, False]])


@pytest.fixture(scope='module')
def tiny():
  """(model, video, params, jitted eval forward) of the tiny pretrainer; params initialised once per module."""
  model = _tiny_model()
  video = np.random.default_rng(2).normal(size=VIDEO_SHAPE).astype(np.float32)
  # An 'rbg' key compiles the initialisers about twice as fast as the default threefry key.
  rng = jax.random.key(0, impl='rbg')
  params = jax.jit(lambda v, h: model.init(rng, v, h, train=False, num_hidden=2))(video, HIDDEN)
  return model, video, params, _forward(model)


@pytest.mark.parametrize('variant', ['mu', 'S', 'B', 'L'])
def test_encoder_param_count(variant):
  shapes = jax.eval_shape(vit.VideoViT(variant).init, jax.random.key(0), jnp.zeros((1, 16, 224, 224, 3)))
  v = vit.VARIANTS[variant]
  d, m = v.width, v.mlp_dim
  block = 2 * d + 3 * d * d + 2 * d + d * d + d + 2 * d + d * m + m + m * d + d
  assert _count(shapes) == (2 * 16 * 16 * 3 + 1) * d + v.depth * block + 2 * d == ENCODER_PARAMS[variant]


def test_vit_b_pretrainer_eval_shape_16_frames_224():
  model = m3video.M3VideoPretrainer('B', output_dims=(264,))
  video = jax.ShapeDtypeStruct((2, 16, 224, 224, 3), jnp.float32)
  hidden = jax.ShapeDtypeStruct((2, 1568), jnp.bool_)
  nm = masking.num_hidden((8, 14, 14), 0.7)
  params = jax.eval_shape(lambda v, h: model.init(jax.random.key(0), v, h, train=False, num_hidden=nm), video, hidden)
  pred = jax.eval_shape(lambda p, v, h: model.apply(p, v, h, train=True, num_hidden=nm), params, video, hidden)
  assert pred.shape == (2, 1096, 264) and pred.dtype == jnp.float32
  p = params['params']
  assert _count(p['encoder']) == 86_227_200
  # Decoder side: encoder_to_decoder 768x192, mask token, one width-192 block, norm, linear head to 264.
  block = 2 * 192 + 3 * 192 * 192 + 2 * 192 + 192 * 192 + 192 + 2 * 192 + 2 * 4 * 192 * 192 + 4 * 192 + 192
  assert _count(p['decoder']) == 768 * 192 + 192 + block + 2 * 192 + 192 * 264 + 264


def test_param_names_are_stable(tiny):
  params = tiny[2]['params']
  flat = {'/'.join(k): v.shape for k, v in flax.traverse_util.flatten_dict(params).items()}
  d, m = 64, 256
  want_block = {
      'norm1/scale': (d,), 'norm1/bias': (d,), 'attn/qkv/kernel': (d, 3 * d), 'attn/q_bias': (d,),
      'attn/v_bias': (d,), 'attn/proj/kernel': (d, d), 'attn/proj/bias': (d,), 'norm2/scale': (d,),
      'norm2/bias': (d,), 'mlp/fc1/kernel': (d, m), 'mlp/fc1/bias': (m,), 'mlp/fc2/kernel': (m, d),
      'mlp/fc2/bias': (d,),
  }
  want = {'encoder/patch_embed/kernel': (2, 16, 16, 3, d), 'encoder/patch_embed/bias': (d,),
          'encoder/norm/scale': (d,), 'encoder/norm/bias': (d,),
          'decoder/encoder_to_decoder/kernel': (d, 32), 'decoder/mask_token': (1, 1, 32),
          'decoder/norm/scale': (32,), 'decoder/norm/bias': (32,), 'decoder/head/kernel': (32, 264),
          'decoder/head/bias': (264,)}
  for i in range(2):
    want.update({f'encoder/block_{i:02d}/{k}': s for k, s in want_block.items()})
  want.update({f'decoder/block_00/{k}': tuple(32 if x == d else 128 if x == m else 96 if x == 3 * d else x for x in s)
               for k, s in want_block.items()})
  assert flat == want


def test_sincos_table_is_the_reference_interleaved_formula():
  table = layers.sincos_table(7, 6)
  for p in range(7):
    for j in range(6):
      angle = p / 10000 ** (2 * (j // 2) / 6)
      np.testing.assert_allclose(table[p, j], np.sin(angle) if j % 2 == 0 else np.cos(angle), rtol=1e-6, atol=1e-7)


def test_attention_matches_reference_formula_with_q_and_v_bias_only():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, 5, 8)).astype(np.float32)
  attn = layers.Attention(num_heads=2)
  params = attn.init(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)
  got = attn.apply({'params': params}, x)
  # PyTorch reference: qkv = x @ W.T + cat(q_bias, 0, v_bias); reshape(B, N, 3, H, Dh); softmax(q k^T * Dh^-0.5) v.
  w = np.asarray(params['qkv']['kernel'])
  bias = np.concatenate([params['q_bias'], np.zeros(8), params['v_bias']])
  qkv = (x @ w + bias).reshape(2, 5, 3, 2, 4).transpose(2, 0, 3, 1, 4)
  q, k, v = qkv[0], qkv[1], qkv[2]
  logits = q @ k.transpose(0, 1, 3, 2) * 4**-0.5
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  out = (probs @ v).transpose(0, 2, 1, 3).reshape(2, 5, 8)
  want = out @ np.asarray(params['proj']['kernel']) + np.asarray(params['proj']['bias'])
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def test_attention_gradients_match_plain_softmax_attention():
  """The deferred-normalisation softmax (and its stop-gradient max shift) has the gradients of `softmax(l) @ v`."""
  rng = np.random.default_rng(1)
  x = (2 * rng.normal(size=(2, 6, 8))).astype(np.float32)
  attn = layers.Attention(num_heads=2)
  params = attn.init(jax.random.key(0), x)['params']
  params = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape).astype(np.float32)), params)

  def plain(params, x):
    qkv = (x @ params['qkv']['kernel']).reshape(2, 6, 3, 2, 4)
    q = (qkv[:, :, 0] + params['q_bias'].reshape(2, 4)) * 4**-0.5
    k, v = qkv[:, :, 1], qkv[:, :, 2] + params['v_bias'].reshape(2, 4)
    w = jax.nn.softmax(jnp.einsum('bqhd,bkhd->bhqk', q, k), axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', w, v).reshape(2, 6, 8)
    return out @ params['proj']['kernel'] + params['proj']['bias']

  cot = rng.normal(size=(2, 6, 8)).astype(np.float32)
  loss = lambda f: (lambda p, x: jnp.vdot(f(p, x), cot))
  got = jax.grad(loss(lambda p, x: attn.apply({'params': p}, x)), argnums=(0, 1))(params, x)
  want = jax.grad(loss(plain), argnums=(0, 1))(params, x)
  for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(np.abs(w).max()))
  # Logits in the thousands (exp would overflow without the max shift): output and gradients stay finite.
  big = jax.grad(loss(lambda p, x: attn.apply({'params': p}, x)), argnums=(0, 1))(params, 100 * x)
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(big))


def test_gelu_is_the_exact_erf_gelu_with_its_derivative():
  x = jnp.linspace(-10.0, 10.0, 2001)
  # erf form as PyTorch: 1 + erf(x / sqrt 2) cancels for x << 0, so absolute (not relative) agreement to 1 ulp of 1.
  np.testing.assert_allclose(layers.gelu(x), jax.nn.gelu(x, approximate=False), rtol=1e-6, atol=1e-6)
  d = jax.vmap(jax.grad(layers.gelu))(x)
  np.testing.assert_allclose(d, jax.vmap(jax.grad(lambda t: jax.nn.gelu(t, approximate=False)))(x), rtol=1e-5,
                             atol=1e-5)


def test_patch_embed_equals_a_conv3d_with_the_stored_kernel(tiny):
  _, video, params, _ = tiny
  params = params['params']['encoder']['patch_embed']
  got = vit.PatchEmbed((2, 16, 16), 64).apply({'params': params}, vit.patchify(video, (2, 16, 16)))
  conv = jax.lax.conv_general_dilated(video, params['kernel'], (2, 16, 16), 'VALID',
                                      dimension_numbers=('NDHWC', 'DHWIO', 'NDHWC'),
                                      precision=jax.lax.Precision.HIGHEST) + params['bias']
  np.testing.assert_allclose(got, conv.reshape(2, -1, 64), rtol=1e-4, atol=1e-4)


def test_encoder_shapes_on_all_and_visible_tokens_are_finite(tiny):
  _, video, params, _ = tiny
  enc = vit.VideoViT('mu')
  params = {'params': params['params']['encoder']}
  out = jax.jit(enc.apply)(params, video)
  assert out.shape == (2, 8, 64) and np.isfinite(np.asarray(out)).all()
  vis = jnp.array([[0, 3, 7], [1, 2, 6]], jnp.int32)
  out_vis = jax.jit(lambda p, v, i: enc.apply(p, v, visible_idx=i))(params, video, vis)
  assert out_vis.shape == (2, 3, 64) and np.isfinite(np.asarray(out_vis)).all()
  with pytest.raises(ValueError, match='multiples'):
    enc.apply(params, video[:, :3])


def test_pretrainer_predicts_hidden_tokens_in_joint_mode(tiny):
  _, video, params, fwd = tiny
  pred = fwd(params, video)
  assert pred.shape == (2, 2, 264) and pred.dtype == jnp.float32 and np.isfinite(np.asarray(pred)).all()


def test_separate_decoders_concatenate_their_predictions(tiny):
  video = tiny[1]
  model = _tiny_model(output_dims=(48, 216))
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(1), video, HIDDEN, train=False, num_hidden=2))['params']
  assert set(shapes) == {'encoder', 'decoder_0', 'decoder_1'}
  assert shapes['decoder_0']['head']['kernel'].shape == (32, 48)
  assert shapes['decoder_1']['head']['kernel'].shape == (32, 216)
  rng = np.random.default_rng(8)
  params = jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s.shape).astype(np.float32) * 0.1), shapes)
  apply = lambda m, p: jax.jit(lambda p: m.apply({'params': p}, video, HIDDEN, train=False, num_hidden=2))(p)
  pred = apply(model, params)
  assert pred.shape == (2, 2, 264) and np.isfinite(np.asarray(pred)).all()
  # Each part is what a joint model made of the shared encoder and that decoder predicts.
  first = apply(_tiny_model(output_dims=(48,)), {'encoder': params['encoder'], 'decoder': params['decoder_0']})
  np.testing.assert_allclose(pred[..., :48], first, rtol=1e-5, atol=1e-6)


def test_init_follows_the_reference(tiny):
  p = tiny[2]['params']
  block = p['encoder']['block_00']
  assert (block['attn']['q_bias'] == 0).all() and (block['attn']['v_bias'] == 0).all()
  assert (block['norm1']['scale'] == 1).all() and (block['mlp']['fc1']['bias'] == 0).all()
  # xavier_uniform on the fused qkv [64, 192]; PyTorch-default uniform on the patch embedding and encoder_to_decoder.
  assert np.abs(block['attn']['qkv']['kernel']).max() <= np.sqrt(6 / (64 + 192))
  assert np.abs(block['attn']['qkv']['kernel']).max() > 0.9 * np.sqrt(6 / (64 + 192))
  assert np.abs(p['encoder']['patch_embed']['kernel']).max() <= 1 / np.sqrt(1536)
  assert np.abs(p['decoder']['encoder_to_decoder']['kernel']).max() <= 1 / np.sqrt(64)
  token = np.asarray(p['decoder']['mask_token'])
  assert np.abs(token).max() <= 0.02 and token.std() > 0.005


def test_prediction_does_not_see_hidden_pixels(tiny):
  _, video, params, fwd = tiny
  pred = fwd(params, video)
  video2 = video.copy()
  video2[0, :, 0:16, 16:32] += 10.0  # Clip 0 hides spatial position 1 (row 0, col 1) in both time slots.
  np.testing.assert_allclose(fwd(params, video2), pred, rtol=1e-5, atol=1e-5)
  video2[0, :, 16:32, 0:16] += 10.0  # A visible token changes the prediction.
  assert not np.allclose(fwd(params, video2), pred, atol=1e-3)


def test_bfloat16_compute_keeps_float32_params_and_predictions(tiny):
  _, video, params, fwd = tiny
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  pred = _forward(_tiny_model(dtype=jnp.bfloat16))(params, video)
  ref = fwd(params, video)
  assert pred.dtype == jnp.float32 and np.isfinite(np.asarray(pred)).all()
  np.testing.assert_allclose(pred, ref, atol=0.15)


def test_drop_path_is_random_in_training_and_off_in_eval(tiny):
  _, video, params, fwd = tiny
  fwd_train = _forward(_tiny_model(drop_path_rate=0.5), train=True)
  a = fwd_train(params, video, jax.random.key(1))
  b = fwd_train(params, video, jax.random.key(2))
  assert not np.allclose(a, b)
  # In eval, drop path is off: the same numbers as the model without it.
  np.testing.assert_array_equal(_forward(_tiny_model(drop_path_rate=0.5))(params, video), fwd(params, video))


def test_tiny_model_overfits_one_fixed_batch(tiny):
  model, video, params, _ = tiny
  rng = np.random.default_rng(7)
  b, t, h, w, steps = 2, 4, 32, 32, 6
  batch = {
      'video': video,
      'traj_disp': rng.normal(size=(b, t // 2, h // 8, w // 8, steps, 2)).astype(np.float32),
      'traj_valid': rng.random((b, t // 2, h // 8, w // 8)) < 0.8,
      'traj_hog': rng.random((b, t // 2, h // 8, w // 8, steps, 9)).astype(np.float32),
  }
  cfg = targets.default_config()
  dims = targets.part_dims(cfg)
  assert model.output_dims == (sum(dims.values()),)
  params = params['params']
  hidden, nm = HIDDEN, 2
  tx = optax.adam(3e-3)
  opt_state = tx.init(params)

  def loss_fn(p):
    target, weight = targets.compute(batch, cfg)
    pred = model.apply({'params': p}, batch['video'], hidden, train=True, num_hidden=nm)
    return losses.masked_l2(pred, target, weight, hidden, dims)[0]

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = tx.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  history = []
  for _ in range(25):
    params, opt_state, loss = step(params, opt_state)
    history.append(float(loss))
  assert np.isfinite(history).all()
  assert history[-1] < 0.25 * history[0], history


def test_materialize_cotangent_is_the_identity_forward_and_backward():
  x = jnp.asarray(np.random.default_rng(9).normal(size=(2, 3, 4)), jnp.float32)
  fn = jax.jit(jax.value_and_grad(lambda x: jnp.sum(jnp.sin(layers.materialize_cotangent(x)))))
  value, grad = fn(x)
  np.testing.assert_allclose(value, jnp.sum(jnp.sin(x)), rtol=1e-6)
  np.testing.assert_allclose(grad, jnp.cos(x), rtol=1e-6)
  # A NaN cotangent (the loop runs once) still comes out unchanged.
  grad = jax.jit(jax.grad(lambda x: jnp.sum(layers.materialize_cotangent(x) * jnp.nan)))(x)
  assert np.isnan(np.asarray(grad)).all()
