"""Attention implementations (`config.model.attention`) and rematerialisation (`config.model.remat`): the same function
and the same parameters whichever is chosen; the choice is validated and resolved per backend.

On CPU, 'explicit' (the hand-written attention) is compared with 'xla' (`jax.nn.dot_product_attention`); on a GPU the
same comparisons also run for 'cudnn' (`bench/device_check.sh` runs this file there).
"""
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import pretrain_ssv2
from m3video_jax import config_lib
from m3video_jax import tasks
from m3video_jax import train_lib
from m3video_jax.models import layers
from m3video_jax.models import m3video
from m3video_jax.models import vit

VIDEO_SHAPE = (2, 4, 32, 32, 3)  # 2 x 2 x 2 tokens.
HIDDEN = np.array([[False, True, False, False, False, True, False, False],
                   [True, False, False, False, True, False, False, False]])
ON_GPU = jax.default_backend() == 'gpu'
# The implementations compared with 'explicit' on this backend.
OTHERS = ['xla'] + (['cudnn'] if ON_GPU else [])
# (dtype, implementation compared with 'explicit'); cuDNN flash attention is bfloat16 only.
COMPARISONS = [(d, o) for d in ('float32', 'bfloat16') for o in OTHERS if not (o == 'cudnn' and d == 'float32')]

# Tolerances, measured on CPU (jax 0.10.2) with the params below (perturbed so that attention is far from uniform):
# float32: 'xla' differs from 'explicit' by 2.6e-7 of the output scale and 6.6e-7 of a gradient leaf's largest value;
# tolerance 1e-5 of either. bfloat16 compute: 'xla' differs from 'explicit' by 7.1e-3 of the output scale and 1.8e-2
# of a leaf's largest gradient, the size of bf16 rounding itself (bf16 'explicit' vs its float32 run: 6.0e-3 and
# 1.9e-2); tolerance 2e-2 and 4e-2 (about 2x).
TOLERANCE = {'float32': (1e-5, 1e-5), 'bfloat16': (2e-2, 4e-2)}


def _pretrainer(**kw):
  kw = dict(encoder_variant='mu', decoder_width=32, decoder_depth=1, decoder_heads=2, output_dims=(264,)) | kw
  return m3video.M3VideoPretrainer(**kw)


@pytest.fixture(scope='module')
def setup():
  """(video, params of the tiny pretrainer, output cotangent); params perturbed away from the init (zero biases,
  near-uniform attention) so that every part of attention matters."""
  video = np.random.default_rng(2).normal(size=VIDEO_SHAPE).astype(np.float32)
  params = jax.jit(lambda v, h: _pretrainer(attention='explicit').init(
      jax.random.key(0, impl='rbg'), v, h, train=False, num_hidden=2))(video, HIDDEN)['params']
  rng = np.random.default_rng(3)
  params = jax.tree.map(
      lambda x: jnp.asarray(x + 0.3 * (np.abs(x).max() + 1e-3) * rng.normal(size=x.shape).astype(np.float32)), params)
  return video, params, rng.normal(size=(2, 2, 264)).astype(np.float32)


def _output_and_grads(apply, params, cot):
  """`apply(params)` and the gradient of `<apply(params), cot>`, jitted. float32 matmuls at full float32 precision:
  GPUs would otherwise round them to TensorFloat-32, and the float32 tolerance is for float32 (no-op on CPU)."""
  with jax.default_matmul_precision('float32'):
    return jax.jit(lambda p: (apply(p), jax.grad(lambda p: jnp.vdot(apply(p), cot))(p)))(params)


def _assert_close(got, want, dtype):
  out_tol, grad_tol = TOLERANCE[dtype]
  (out, grads), (ref_out, ref_grads) = got, want
  scale = float(np.abs(ref_out).max())
  np.testing.assert_allclose(out, ref_out, rtol=0, atol=out_tol * scale)
  flat, ref_flat = flax.traverse_util.flatten_dict(grads), flax.traverse_util.flatten_dict(ref_grads)
  assert flat.keys() == ref_flat.keys()
  for key, g in ref_flat.items():
    np.testing.assert_allclose(flat[key], g, rtol=0, atol=grad_tol * float(np.abs(g).max()) + 1e-30,
                               err_msg='/'.join(key))


@pytest.mark.parametrize('dtype, other', COMPARISONS)
def test_pretrainer_same_output_and_gradients_with_every_attention(setup, dtype, other):
  video, params, cot = setup

  def run(attention):
    model = _pretrainer(attention=attention, dtype=jnp.dtype(dtype))
    apply = lambda p: model.apply({'params': p}, video, HIDDEN, train=True, num_hidden=2)
    return _output_and_grads(apply, params, cot)

  _assert_close(run(other), run('explicit'), dtype)


@pytest.mark.parametrize('dtype, other', COMPARISONS)
def test_encoder_on_all_tokens_same_output_and_gradients_with_every_attention(setup, dtype, other):
  video, params, _ = setup
  cot = np.random.default_rng(4).normal(size=(2, 8, 64)).astype(np.float32)

  def run(attention):
    encoder = vit.VideoViT('mu', attention=attention, dtype=jnp.dtype(dtype))
    apply = lambda p: encoder.apply({'params': p}, video, train=True).astype(jnp.float32)
    return _output_and_grads(apply, params['encoder'], cot)

  _assert_close(run(other), run('explicit'), dtype)


def test_auto_resolves_per_backend_and_bad_values_name_the_field():
  assert jax.default_backend() != 'cpu' or layers.resolve_attention('auto') == 'explicit'
  assert [layers.resolve_attention('auto', b) for b in ('cpu', 'gpu', 'tpu')] == ['explicit', 'xla', 'xla']
  assert layers.resolve_attention('xla', 'cpu') == 'xla' and layers.resolve_attention('cudnn', 'gpu') == 'cudnn'
  assert layers.ATTENTION_IMPLEMENTATIONS == config_lib.ATTENTION_IMPLEMENTATIONS
  with pytest.raises(ValueError, match=r"config.model.attention='flash' is invalid: expected one of \('auto'"):
    layers.resolve_attention('flash')
  for backend in ('cpu', 'tpu'):
    with pytest.raises(ValueError, match=rf"config.model.attention='cudnn' .*needs a CUDA GPU.*'{backend}'"):
      layers.resolve_attention('cudnn', backend)


@pytest.mark.skipif(ON_GPU, reason='the error is for backends without cuDNN')
def test_cudnn_without_a_gpu_is_a_clear_error(setup):
  video, params, _ = setup
  model = _pretrainer(attention='cudnn', dtype=jnp.bfloat16)
  with pytest.raises(ValueError, match=r"config.model.attention='cudnn' \(cuDNN flash attention\) needs a CUDA GPU"):
    model.apply({'params': params}, video, HIDDEN, train=False, num_hidden=2)
  # From a config: validation for this machine says so before anything is traced.
  config = _tiny_config(**{'model.attention': 'cudnn', 'model.dtype': 'bfloat16'})
  tasks.validate(config)  # Valid in itself (e.g. checked on a laptop for a GPU run) ...
  with pytest.raises(config_lib.ConfigError, match=r"config.model.attention='cudnn' is invalid: expected 'auto', "
                     r"'xla' or 'explicit' on the cpu backend"):
    tasks.validate(config, num_devices=jax.device_count())  # ... but not on this machine.
  with pytest.raises(ValueError, match='needs a CUDA GPU'):
    train_lib.make_trainer(config)


def _tiny_config(**overrides):
  c = pretrain_ssv2.get_config('tiny')
  c.data.train_files = 'unused'
  for key, value in overrides.items():
    section, field = key.split('.')
    c[section][field] = value
  return c


@pytest.mark.parametrize('field, value, message', [
    ('model.attention', 'flash', r"config.model.attention='flash' is invalid: expected one of \('auto', 'explicit', "
     r"'xla', 'cudnn'\)"),
    ('model.attention', 'cudnn', r"config.model.attention='cudnn' is invalid: expected 'cudnn' together with "
     r"model.dtype='bfloat16'"),
    ('model.remat', 1, r'config.model.remat=1 is invalid: expected True or False'),
])
def test_config_validation_names_the_field_value_and_allowed_values(field, value, message):
  saved = _tiny_config().to_dict()  # A plain dict: a locked config would refuse an int for a bool field itself.
  section, name = field.split('.')
  saved[section][name] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    tasks.validate(ml_collections.ConfigDict(saved))


def test_config_json_of_an_older_run_without_the_fields_builds_the_model():
  saved = _tiny_config().to_dict()
  del saved['model']['attention'], saved['model']['remat']
  rebuilt = config_lib.pretrain_config_from_dict(saved)  # As visualize.py reads a run.
  assert config_lib.model_options(rebuilt) == ('auto', False)
  raw = ml_collections.ConfigDict(saved)  # As evaluate.py reads a run: no defaults filled in.
  tasks.validate(raw)
  model = tasks.get_task(raw).model
  assert (model.attention, model.remat) == ('auto', False)


def test_remat_gives_the_same_parameters_loss_and_gradients(setup):
  """Every encoder and decoder block rematerialised, in training mode with drop path: same numbers."""
  video, params, cot = setup

  def run(remat):
    model = _pretrainer(remat=remat, drop_path_rate=0.3)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), video, HIDDEN, train=False, num_hidden=2))
    apply = lambda p: model.apply({'params': p}, video, HIDDEN, train=True, num_hidden=2,
                                  rngs={'dropout': jax.random.key(5)})
    return shapes, _output_and_grads(apply, params, cot)

  (shapes, got), (ref_shapes, want) = run(True), run(False)
  assert jax.tree.map(lambda s: s.shape, shapes) == jax.tree.map(lambda s: s.shape, ref_shapes)
  # Not bitwise (the recomputation fuses differently): measured 3.4e-7 of a leaf's largest gradient; tolerance 1e-5.
  _assert_close(got, want, 'float32')
  # The rematerialised step really recomputes: the block sits under a checkpoint (remat) in the jaxpr.
  jaxpr = str(jax.make_jaxpr(lambda p: jax.grad(lambda p: jnp.vdot(
      _pretrainer(remat=True).apply({'params': p}, video, HIDDEN, train=False, num_hidden=2), cot))(p))(params))
  assert 'remat' in jaxpr or 'checkpoint' in jaxpr


def test_feature_encoder_takes_the_attention_implementation(setup):
  """`load_encoder` / `features.Encoder` run 'auto' unless told otherwise, whatever the checkpoint was trained with."""
  from m3video_jax.interop import features

  params = {'encoder': setup[1]['encoder']}
  video = np.random.default_rng(6).integers(0, 256, VIDEO_SHAPE, dtype=np.uint8)
  default, xla = features.Encoder(params), features.Encoder(params, attention='xla')
  assert (default.attention, xla.attention) == ('auto', 'xla')
  want = np.asarray(default(video))
  np.testing.assert_allclose(np.asarray(xla(video)), want, rtol=0, atol=1e-5 * np.abs(want).max())
