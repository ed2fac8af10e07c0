"""Export to PyTorch: parity with transformers' VideoMAE and with the reference's formulas, round trips, the CLIs."""
import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

import procs

from m3video_jax.data import schema
from m3video_jax.interop import export
from m3video_jax.interop import features
from m3video_jax.interop import import_weights
from m3video_jax.interop import weights
from m3video_jax.interop import torch_mapping
from m3video_jax.models import m3video
from m3video_jax.models import vit

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def random_params(abstract, seed):
  """Random values of the right shapes (no init compile): LayerNorm scales near 1, everything else, including the
  zero-initialised q/v biases, LayerNorm biases and heads, non-zero and distinct."""
  rng = np.random.default_rng(seed)

  def leaf(path, x):
    if jax.tree_util.keystr(path).endswith("['scale']"):
      return (1 + rng.normal(scale=0.1, size=x.shape)).astype(np.float32)
    return rng.normal(scale=0.05, size=x.shape).astype(np.float32)

  return jax.tree_util.tree_map_with_path(leaf, abstract)


def encoder_params(variant, seed=0, final_norm=True, patch_size=(2, 16, 16)):
  model = vit.VideoViT(variant, patch_size)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, *patch_size, 3), np.float32))['params']
  params = dict(random_params(abstract, seed))
  if not final_norm:
    params.pop('norm')
  return params


def classifier_params(variant, num_classes, seed=0):
  """The classifier layout of issue 6: encoder without its final norm, fc_norm, head."""
  width = vit.VARIANTS[variant].width
  heads = {'fc_norm': {'scale': jax.ShapeDtypeStruct((width,), np.float32),
                       'bias': jax.ShapeDtypeStruct((width,), np.float32)},
           'head': {'kernel': jax.ShapeDtypeStruct((width, num_classes), np.float32),
                    'bias': jax.ShapeDtypeStruct((num_classes,), np.float32)}}
  return {'encoder': encoder_params(variant, seed, final_norm=False), **random_params(heads, seed + 7)}


def pretrainer_params(output_dims=(40,), seed=0):
  model = m3video.M3VideoPretrainer('mu', decoder_width=32, decoder_depth=2, decoder_heads=2, output_dims=output_dims)
  video = np.zeros((1, 4, 32, 32, 3), np.float32)
  hidden = np.arange(8)[None] % 2 == 0
  abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video, hidden, train=False, num_hidden=4))
  return random_params(abstract['params'], seed)


def random_clip(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def hf_input_nhwc(video_uint8):
  """What our Encoder does inside: [0, 1] then ImageNet mean/std; `[B, T, H, W, C]` float32."""
  mean, std = np.float32(schema.IMAGENET_MEAN), np.float32(schema.IMAGENET_STD)
  return (video_uint8.astype(np.float32) / 255.0 - mean) / std


def hf_input(video_uint8):
  """The same clip in transformers' `pixel_values` layout `(B, T, C, H, W)`."""
  return torch.from_numpy(np.ascontiguousarray(hf_input_nhwc(video_uint8).transpose(0, 1, 4, 2, 3)))


def assert_trees_identical(a, b):
  flat_a = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(a)}
  flat_b = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(b)}
  assert sorted(flat_a) == sorted(flat_b)
  for k in flat_a:
    assert flat_a[k].dtype == flat_b[k].dtype, k
    np.testing.assert_array_equal(flat_a[k], flat_b[k], err_msg=k)


def test_hf_encoder_matches_transformers_videomae_model_vit_s(tmp_path):
  params = {'encoder': encoder_params('S', seed=0)}
  video = random_clip((2, 8, 64, 64, 3))
  ours = np.asarray(features.Encoder(params)(video))
  export.save_hf(params, str(tmp_path / 'hf'), num_frames=8, image_size=64)
  model, info = transformers.VideoMAEModel.from_pretrained(str(tmp_path / 'hf'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  # The biases really arrived (a transformers 5.x release once loaded them as zeros without a word).
  attn = model.encoder.layer[3].attention.attention
  np.testing.assert_array_equal(attn.query.bias.detach().numpy(), params['encoder']['block_03']['attn']['q_bias'])
  np.testing.assert_array_equal(attn.value.bias.detach().numpy(), params['encoder']['block_03']['attn']['v_bias'])
  model.eval()
  with torch.no_grad():
    theirs = model(hf_input(video)).last_hidden_state.numpy()
  assert theirs.shape == ours.shape == (2, 4 * 4 * 4, 384)
  diff = np.abs(theirs - ours).max()
  print(f'ViT-S encoder vs VideoMAEModel: max abs diff {diff:.2e}')
  assert diff <= 1e-4


def test_hf_classifier_logits_match_transformers(tmp_path):
  from m3video_jax.models import classifier

  params = classifier_params('mu', num_classes=7, seed=3)
  video = random_clip((2, 4, 48, 32, 3), seed=1)  # Non-square frames: H and W are not swapped anywhere.
  model = classifier.VideoClassifier('mu', num_classes=7)
  ours = np.asarray(jax.jit(lambda p, x: model.apply({'params': p}, x, train=False))(params, hf_input_nhwc(video)))
  np.testing.assert_allclose(np.asarray(features.Encoder(params).logits(video)), ours, atol=1e-5)
  export.save_hf(params, str(tmp_path / 'hf'), num_frames=4, image_size=(48, 32))
  model, info = transformers.VideoMAEForVideoClassification.from_pretrained(str(tmp_path / 'hf'),
                                                                            output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  model.eval()
  with torch.no_grad():
    theirs = model(hf_input(video)).logits.numpy()
    model.fc_norm.eps = 1e-6  # Ours (the reference's); transformers fixes nn.LayerNorm's default 1e-5.
    theirs_same_eps = model(hf_input(video)).logits.numpy()
  diff, diff_same_eps = np.abs(theirs - ours).max(), np.abs(theirs_same_eps - ours).max()
  print(f'classifier logits vs VideoMAEForVideoClassification: max abs diff {diff:.2e} (fc_norm eps 1e-5), '
        f'{diff_same_eps:.2e} (eps set to 1e-6)')
  assert diff_same_eps <= 1e-4
  # With transformers' eps, fc_norm divides by sqrt(var + 1e-5) instead of sqrt(var + 1e-6): a relative change of
  # about 4.5e-6 / var of the pooled feature. Trained features can have var ~ 1e-3 (-> ~5e-3 relative); these random
  # ones have var ~ 1, so both runs land near 1e-6.
  assert diff <= 5e-3 * max(1.0, np.abs(ours).max())


def reference_forward(sd, video, depth, heads, prefix=''):
  """The reference encoder's forward pass written from its formulas (docs/design.md §4) on a `mme` state dict."""
  import torch.nn.functional as F

  p = lambda name: sd[prefix + name]  # noqa: E731
  x = torch.from_numpy(video).permute(0, 4, 1, 2, 3)  # (B, C, T, H, W)
  w = p('patch_embed.proj.weight')
  x = F.conv3d(x, w, p('patch_embed.proj.bias'), stride=w.shape[2:]).flatten(2).transpose(1, 2)
  b, n, d = x.shape
  pos = np.arange(n)[:, None] / np.power(10000, 2 * (np.arange(d) // 2) / d)[None]
  pos[:, 0::2], pos[:, 1::2] = np.sin(pos[:, 0::2]), np.cos(pos[:, 1::2])
  x = x + torch.from_numpy(pos.astype(np.float32))[None]
  for i in range(depth):
    q = f'blocks.{i}.'
    y = F.layer_norm(x, (d,), p(q + 'norm1.weight'), p(q + 'norm1.bias'), eps=1e-6)
    qkv_bias = torch.cat([p(q + 'attn.q_bias'), torch.zeros(d), p(q + 'attn.v_bias')])
    qkv = F.linear(y, p(q + 'attn.qkv.weight'), qkv_bias).reshape(b, n, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    attn = ((qkv[0] * (d // heads)**-0.5) @ qkv[1].transpose(-2, -1)).softmax(-1)
    y = (attn @ qkv[2]).transpose(1, 2).reshape(b, n, d)
    x = x + F.linear(y, p(q + 'attn.proj.weight'), p(q + 'attn.proj.bias'))
    y = F.layer_norm(x, (d,), p(q + 'norm2.weight'), p(q + 'norm2.bias'), eps=1e-6)
    y = F.linear(F.gelu(F.linear(y, p(q + 'mlp.fc1.weight'), p(q + 'mlp.fc1.bias'))), p(q + 'mlp.fc2.weight'),
                 p(q + 'mlp.fc2.bias'))
    x = x + y
  if prefix + 'norm.weight' in sd:
    x = F.layer_norm(x, (d,), p('norm.weight'), p('norm.bias'), eps=1e-6)
  return x.numpy()


def test_mme_export_runs_in_the_reference_formulas(tmp_path):
  params = pretrainer_params()
  video = np.random.default_rng(0).normal(size=(2, 4, 32, 32, 3)).astype(np.float32)
  ours = np.asarray(vit.VideoViT('mu').apply({'params': params['encoder']}, video))
  export.save_mme(params, str(tmp_path / 'm.pth'))
  sd = torch.load(str(tmp_path / 'm.pth'), weights_only=True)['model']
  theirs = reference_forward(sd, video, depth=2, heads=4, prefix='encoder.')
  diff = np.abs(theirs - ours).max()
  print(f'mu encoder vs the reference formulas on the mme state dict: max abs diff {diff:.2e}')
  assert diff <= 1e-5


def test_mme_pretraining_keys_follow_the_reference():
  params = pretrainer_params()
  sd = torch_mapping.to_torch(params, 'mme')
  d, dd = 64, 32
  assert sd['encoder.patch_embed.proj.weight'].shape == (d, 3, 2, 16, 16)
  assert sd['encoder.blocks.1.attn.qkv.weight'].shape == (3 * d, d)
  assert sd['encoder.blocks.1.attn.q_bias'].shape == (d,) and 'encoder.blocks.1.attn.qkv.bias' not in sd
  assert sd['encoder.norm.weight'].shape == (d,)
  assert sd['encoder_to_decoder.0.weight'].shape == (dd, d)
  assert sd['mask_token'].shape == (1, 1, dd)
  assert sd['decoder.0.blocks.1.mlp.fc1.weight'].shape == (4 * dd, dd)
  assert sd['decoder.0.norm.bias'].shape == (dd,)
  assert sd['decoder.0.head.weight'].shape == (40, dd)
  n_params = sum(v.size for v in sd.values())
  assert n_params == sum(x.size for x in jax.tree.leaves(params))


def test_mme_classifier_keys_are_the_reference_finetuning_keys():
  params = classifier_params('mu', num_classes=5)
  sd = torch_mapping.to_torch(params, 'mme')
  block = ['norm1.weight', 'norm1.bias', 'attn.q_bias', 'attn.v_bias', 'attn.qkv.weight', 'attn.proj.weight',
           'attn.proj.bias', 'norm2.weight', 'norm2.bias', 'mlp.fc1.weight', 'mlp.fc1.bias', 'mlp.fc2.weight',
           'mlp.fc2.bias']
  expected = {'patch_embed.proj.weight', 'patch_embed.proj.bias', 'fc_norm.weight', 'fc_norm.bias', 'head.weight',
              'head.bias'} | {f'blocks.{i}.{k}' for i in range(2) for k in block}
  assert set(sd) == expected
  assert sd['head.weight'].shape == (5, 64)


@pytest.mark.parametrize('output_dims', [(40,), (24, 16)], ids=['joint', 'separate'])
def test_mme_round_trip_is_bit_identical(tmp_path, output_dims):
  params = pretrainer_params(output_dims)
  export.save_mme(params, str(tmp_path / 'm.pth'), config={'model': {'encoder': 'mu'}, 'data': {'num_frames': 4}})
  back, config = import_weights.import_weights(str(tmp_path / 'm.pth'), str(tmp_path / 'imported'))
  assert_trees_identical(back, params)
  assert_trees_identical(weights.load_weights(str(tmp_path / 'imported'))[0], params)
  assert config['data']['num_frames'] == 4 and config['model']['encoder'] == 'mu'
  assert config['model']['decoder_mode'] == ('joint' if len(output_dims) == 1 else 'separate')


def test_mme_classifier_round_trip_is_bit_identical(tmp_path):
  params = classifier_params('mu', num_classes=5)
  export.save_mme(params, str(tmp_path / 'c.pth'))
  back, config = import_weights.import_weights(str(tmp_path / 'c.pth'), str(tmp_path / 'imported'))
  assert_trees_identical(back, params)
  assert config['task'] == 'finetune' and config['model']['num_classes'] == 5


def test_safetensors_round_trip_is_bit_identical(tmp_path):
  params = pretrainer_params()
  export.save_safetensors(params, str(tmp_path / 'enc.safetensors'), config={'data': {'num_frames': 4, 'res': 32}})
  from safetensors.numpy import load_file

  assert set(load_file(str(tmp_path / 'enc.safetensors'))) == set(
      torch_mapping.to_torch({'encoder': params['encoder']}, 'mme'))
  back, config = import_weights.import_weights(str(tmp_path / 'enc.safetensors'), str(tmp_path / 'imported'))
  assert_trees_identical(back, {'encoder': params['encoder']})
  assert config['data'] == {'num_frames': 4, 'res': 32}


def test_hf_round_trip_is_bit_identical(tmp_path):
  params = classifier_params('mu', num_classes=3)
  export.save_hf(params, str(tmp_path / 'hf'), num_frames=4, image_size=32)
  back, config = weights.load_weights(str(tmp_path / 'hf'))
  assert_trees_identical(back, params)
  assert config['data'] == {'num_frames': 4, 'res': 32}


def test_unmapped_parameter_is_an_error():
  params = {'encoder': encoder_params('mu')}
  params['encoder']['block_00']['attn']['k_bias'] = np.zeros(64, np.float32)
  with pytest.raises(ValueError, match='encoder/block_00/attn/k_bias'):
    torch_mapping.to_torch(params, 'mme')


def _run(module, *args, env=None):
  proc = subprocess.run([sys.executable, '-m', module, *args], cwd=REPO, capture_output=True, text=True, env=env,
                        timeout=300)
  assert proc.returncode == 0, f'{module} {args} failed:\n{proc.stdout}\n{proc.stderr[-3000:]}'
  return proc.stdout


@pytest.mark.slow  # Trains (compiles a train step), then starts five Python processes: ~20-45 s on 2 CPU cores.
def test_cli_export_import_features_on_a_trained_checkpoint(tmp_path):
  """A real (1-step) training run, then every CLI of the issue on its checkpoint, in a 1-device process."""
  from configs import pretrain_ssv2
  from data_prep import synthetic
  from m3video_jax import checkpointing
  from m3video_jax import tasks
  from m3video_jax import train_lib

  config = pretrain_ssv2.get_config('tiny')
  config.data.train_files = 'unused'
  config.total_steps = 1
  rng = np.random.default_rng(0)

  def batches(start_step):
    while True:
      b = tasks.example_batch(config, config.data.batch_size)
      b['video'] = rng.normal(size=b['video'].shape).astype(np.float32)
      b['traj_disp'] = rng.normal(scale=3.0, size=b['traj_disp'].shape).astype(np.float32)
      b['traj_valid'] = rng.random(b['traj_valid'].shape) < 0.8
      b['traj_hog'] = rng.random(b['traj_hog'].shape).astype(np.float32)
      yield b

  workdir = tmp_path / 'run'
  train_lib.train_and_evaluate(config, str(workdir), make_batch_iterator=batches)  # XLA at -O0: tests/conftest.py.
  trained = checkpointing.load_params(str(workdir))

  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS=procs.xla_flags(1))  # One device: restore an 8-device run.
  _run('m3video_jax.interop.export', f'--checkpoint={workdir}', '--format=mme', f'--output={tmp_path / "m.pth"}',
       env=env)
  _run('m3video_jax.interop.export', f'--checkpoint={workdir / "checkpoints"}', '--step=1', '--format=safetensors',
       f'--output={tmp_path / "enc.safetensors"}', env=env)
  _run('m3video_jax.interop.export', f'--checkpoint={workdir}', '--format=hf', f'--output={tmp_path / "hf"}', env=env)
  _run('m3video_jax.interop.import_weights', f'--input={tmp_path / "m.pth"}', f'--output={tmp_path / "imported"}',
       env=env)

  assert_trees_identical(weights.load_weights(str(tmp_path / 'imported'))[0], trained)
  hf_config = json.load(open(tmp_path / 'hf' / 'config.json'))
  assert (hf_config['num_frames'], hf_config['image_size'], hf_config['layer_norm_eps']) == (4, 32, 1e-6)
  # The hf export of the trained encoder gives the features our API gives.
  video = random_clip((1, 4, 32, 32, 3))
  model, info = transformers.VideoMAEModel.from_pretrained(str(tmp_path / 'hf'), output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'] and not info['mismatched_keys'], info
  model.eval()
  with torch.no_grad():
    theirs = model(hf_input(video)).last_hidden_state.numpy()
  ours = np.asarray(features.load_encoder(str(workdir))(video))
  assert np.abs(theirs - ours).max() <= 1e-4

  videos = tmp_path / 'videos'
  os.makedirs(videos / 'a')
  for i, n in enumerate((12, 5)):
    synthetic.write_mp4(str(videos / 'a' / f'v{i}.mp4'), random_clip((n, 40, 48, 3), seed=i))
  out = tmp_path / 'feats'
  stdout = _run('m3video_jax.interop.features', f'--checkpoint={tmp_path / "imported"}', f'--input={videos}',
                f'--output_dir={out}', '--num_frames=4', '--stride=2', '--res=32', env=env)
  assert 'done 2' in stdout
  # 12 frames, every 2nd -> 6 sampled -> 2 clips of 4 (the second padded); 5 frames -> 3 sampled -> 1 clip.
  assert np.load(out / 'a' / 'v0.npy').shape == (2, 64)
  assert np.load(out / 'a' / 'v1.npy').shape == (1, 64)
  assert math.isfinite(float(np.load(out / 'a' / 'v0.npy').sum()))


def test_an_existing_output_is_refused_unless_overwrite_and_files_get_ordinary_permissions(tmp_path, capsys):
  params = {'encoder': random_params(jax.eval_shape(vit.VideoViT('mu').init, jax.random.PRNGKey(0),
                                                    np.zeros((1, 2, 16, 16, 3), np.float32))['params'], 0)}
  ckpt = import_weights.write_checkpoint(params, {'data': {'num_frames': 2, 'res': 16}}, str(tmp_path / 'ckpt'))
  umask = os.umask(0o022)
  try:
    for fmt, output, written in (('mme', 'm.pth', 'm.pth'), ('safetensors', 'e.safetensors', 'e.safetensors'),
                                 ('hf', 'hf', 'hf/model.safetensors')):
      args = [f'--checkpoint={ckpt}', f'--format={fmt}', f'--output={tmp_path / output}']
      assert export.main(args) == 0
      assert oct(os.stat(tmp_path / written).st_mode & 0o777) == '0o644', fmt
      before = os.path.getmtime(tmp_path / written)
      assert export.main(args) == 1, fmt
      err = capsys.readouterr().err
      assert err.startswith(f'error: --output={tmp_path / output} ') and 'pass --overwrite' in err, err
      assert len(err.strip().splitlines()) == 1 and os.path.getmtime(tmp_path / written) == before, fmt
      assert export.main(args + ['--overwrite']) == 0, fmt
  finally:
    os.umask(umask)
  # A file format onto a directory, the hf directory onto a file: one line each.
  assert export.main([f'--checkpoint={ckpt}', '--format=mme', f'--output={tmp_path / "hf"}']) == 1
  err = capsys.readouterr().err
  assert err.startswith(f'error: --output={tmp_path / "hf"} is a directory; --format=mme writes one file'), err
  assert export.main([f'--checkpoint={ckpt}', '--format=hf', f'--output={tmp_path / "m.pth"}']) == 1
  assert 'is a file; --format=hf writes a directory' in capsys.readouterr().err
