"""Import of PyTorch weights: accepted wrappers and prefixes, clear errors naming keys, init_from compatibility."""
import argparse
import functools
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from m3video_jax.interop import import_weights
from m3video_jax.interop import weights
from m3video_jax.interop import torch_mapping
from m3video_jax.models import m3video
from m3video_jax.models import vit

torch = pytest.importorskip('torch')


def mu_params(with_decoder=False):
  """Random mu-sized params of the right shapes (no init compile), every leaf distinct and non-zero."""
  if with_decoder:
    model = m3video.M3VideoPretrainer('mu', decoder_width=32, decoder_depth=1, decoder_heads=2, output_dims=(40,))
    video, hidden = np.zeros((1, 4, 32, 32, 3), np.float32), np.arange(8)[None] % 2 == 0
    abstract = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video, hidden, train=False, num_hidden=4))
  else:
    model = vit.VideoViT('mu')
    abstract = {'params': {'encoder': jax.eval_shape(model.init, jax.random.PRNGKey(0),
                                                     np.zeros((1, 2, 16, 16, 3), np.float32))['params']}}
  rng = np.random.default_rng(1)
  return jax.tree.map(lambda x: rng.normal(scale=0.05, size=x.shape).astype(np.float32), abstract['params'])


def torch_state_dict(params, style='mme'):
  return {k: torch.from_numpy(v) for k, v in torch_mapping.to_torch(params, style).items()}


def save(path, obj):
  torch.save(obj, str(path))
  return str(path)


def assert_same(a, b):
  la, lb = jax.tree_util.tree_leaves_with_path(a), jax.tree_util.tree_leaves_with_path(b)
  assert [jax.tree_util.keystr(k) for k, _ in la] == [jax.tree_util.keystr(k) for k, _ in lb]
  for (k, x), (_, y) in zip(la, lb):
    np.testing.assert_array_equal(x, y, err_msg=jax.tree_util.keystr(k))


def load(path, **kwargs):
  return weights.load_weights(str(path), **kwargs)[0]


@pytest.mark.parametrize('wrapper', ['model', 'module', None])
def test_wrappers_and_ddp_prefix_are_accepted(tmp_path, wrapper):
  params = mu_params()
  sd = torch_state_dict(params)
  if wrapper == 'module':  # DeepSpeed: {'module': {...}}, and DDP's 'module.' key prefix inside.
    sd = {'module.' + k: v for k, v in sd.items()}
  obj = {wrapper: sd, 'epoch': 3, 'args': argparse.Namespace(num_frames=8, input_size=32)} if wrapper else sd
  params_back, config = weights.load_weights(save(tmp_path / 'w.pth', obj))
  assert_same(params_back, params)
  if wrapper:  # The reference's pickled `args` are read (weights_only loading allows argparse.Namespace).
    assert config['data'] == {'num_frames': 8, 'res': 32}
  else:
    assert config['data'] == {'num_frames': 16, 'res': 224}
    assert config['imported_from']['guessed_fields'] == ['data.num_frames', 'data.res']


@pytest.mark.parametrize('prefix', ['encoder.', 'backbone.'])
def test_encoder_and_backbone_prefixes_are_accepted(tmp_path, prefix):
  params = mu_params()
  sd = {prefix + k: v for k, v in torch_state_dict(params).items()}
  assert_same(load(save(tmp_path / 'w.pth', {'model': sd})), params)


def test_wrong_shape_names_the_key(tmp_path):
  sd = torch_state_dict(mu_params())
  sd['blocks.1.mlp.fc1.weight'] = torch.zeros(255, 64)
  with pytest.raises(ValueError, match=r'blocks\.1\.mlp\.fc1\.weight: found \(255, 64\), expected \(256, 64\)'):
    load(save(tmp_path / 'w.pth', {'model': sd}))


def test_missing_key_is_named(tmp_path):
  sd = torch_state_dict(mu_params())
  del sd['blocks.0.attn.v_bias']
  with pytest.raises(ValueError, match=r"missing keys \(1\): \['blocks\.0\.attn\.v_bias'\]"):
    load(save(tmp_path / 'w.pth', {'model': sd}))


def test_unexpected_key_is_named(tmp_path):
  sd = torch_state_dict(mu_params())
  sd['blocks.0.attn.k_bias'] = torch.zeros(64)
  with pytest.raises(ValueError, match=r'unexpected keys.*blocks\.0\.attn\.k_bias'):
    load(save(tmp_path / 'w.pth', {'model': sd}))


def test_unknown_width_lists_the_variants(tmp_path):
  sd = torch_state_dict(mu_params())
  sd['patch_embed.proj.weight'] = torch.zeros(72, 3, 2, 16, 16)
  with pytest.raises(ValueError, match=r'width 72 and depth 2 is no known variant'):
    load(save(tmp_path / 'w.pth', {'model': sd}))


def test_reference_mme_decoder_needs_encoder_only(tmp_path):
  """The reference's two MLP heads have no counterpart: an error saying so, then --encoder_only imports the encoder."""
  params = mu_params(with_decoder=True)
  sd = torch_state_dict(params)
  for name in ('decoder.0.head.weight', 'decoder.0.head.bias'):
    del sd[name]
  sd.update({'decoder.0.head.0.0.weight': torch.zeros(512, 32), 'decoder.0.head.0.2.weight': torch.zeros(108, 512)})
  path = save(tmp_path / 'checkpoint-399.pth', {'model': sd})
  with pytest.raises(ValueError, match=r'decoder\.0\.head\.weight.*encoder_only'):
    load(path)
  assert_same(load(path, encoder_only=True), {'encoder': params['encoder']})


def test_videomae_decoder_naming_is_accepted(tmp_path):
  params = mu_params(with_decoder=True)
  sd = torch_state_dict(params)
  sd = {('encoder_to_decoder.weight' if k == 'encoder_to_decoder.0.weight' else k.replace('decoder.0.', 'decoder.')): v
        for k, v in sd.items()}
  params_back, config = weights.load_weights(save(tmp_path / 'videomae.pth', {'model': sd}))
  assert_same(params_back, params)
  assert config['model']['decoder_width'] == 32 and config['model']['output_dims'] == [40]


def test_transformers_4_bias_names_are_accepted(tmp_path):
  from safetensors.torch import save_file

  params = mu_params()
  sd = torch_state_dict(params, 'hf')
  sd = {k.replace('query.bias', 'q_bias').replace('value.bias', 'v_bias'): v for k, v in sd.items()}
  assert any(k.endswith('attention.attention.q_bias') for k in sd)
  save_file(sd, str(tmp_path / 'model.safetensors'))
  assert_same(load(tmp_path / 'model.safetensors'), params)


def test_half_precision_tensors_are_read_as_float32(tmp_path):
  params = mu_params()
  sd = {k: v.to(torch.bfloat16) for k, v in torch_state_dict(params).items()}
  back = load(save(tmp_path / 'w.pth', sd))
  leaf = back['encoder']['block_00']['mlp']['fc1']['kernel']
  assert leaf.dtype == np.float32
  np.testing.assert_allclose(leaf, params['encoder']['block_00']['mlp']['fc1']['kernel'], rtol=1e-2, atol=1e-3)


def test_arbitrary_pickles_are_refused_by_default(tmp_path):
  path = save(tmp_path / 'w.pth', {'model': torch_state_dict(mu_params()), 'extra': functools.partial(print)})
  with pytest.raises(ValueError, match='allow_pickle'):
    load(path)
  assert 'encoder' in load(path, allow_pickle=True)


def test_import_output_works_as_init_from(tmp_path):
  """`config.init_from=<output>` loads the imported encoder into a fresh pretraining model of the same shape."""
  from configs import pretrain_ssv2
  from m3video_jax import checkpointing
  from m3video_jax import tasks

  params = mu_params()
  import_weights.import_weights(save(tmp_path / 'w.pth', {'model': torch_state_dict(params)}), str(tmp_path / 'out'))
  config = pretrain_ssv2.get_config('tiny')
  abstract = jax.eval_shape(tasks.get_task(config).init_params, jax.random.PRNGKey(0))
  fresh = jax.tree.map(lambda x: np.full(x.shape, 0.5, x.dtype), abstract)
  loaded = checkpointing.load_init_params(str(tmp_path / 'out'), fresh)
  assert_same(loaded['encoder'], params['encoder'])
  assert_same(loaded['decoder'], fresh['decoder'])


def test_output_directory_with_a_checkpoint_is_not_overwritten(tmp_path):
  path = save(tmp_path / 'w.pth', torch_state_dict(mu_params()))
  import_weights.import_weights(path, str(tmp_path / 'out'))
  with pytest.raises(FileExistsError, match='already holds checkpoints'):
    import_weights.import_weights(path, str(tmp_path / 'out'))


def test_cli_reports_a_bad_key_in_one_line(tmp_path):
  sd = torch_state_dict(mu_params())
  del sd['blocks.1.norm2.bias']
  path = save(tmp_path / 'w.pth', {'model': sd})
  proc = subprocess.run([sys.executable, '-m', 'm3video_jax.interop.import_weights', f'--input={path}',
                         f'--output={tmp_path / "out"}'], capture_output=True, text=True, timeout=120,
                        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert proc.returncode == 1
  assert "error: " in proc.stderr and "missing keys (1): ['blocks.1.norm2.bias']" in proc.stderr
  assert 'Traceback' not in proc.stderr
  assert not os.path.exists(tmp_path / 'out')


@pytest.mark.parametrize('name', ['w.safetensors', 'w.pth'])
def test_a_truncated_file_is_one_error_line_saying_so(tmp_path, capsys, name):
  """A cut-off download: one line saying the file is truncated or damaged (a .pth used to say "pass --allow_pickle",
  which then failed with a traceback; a .safetensors ended in SafetensorError's traceback)."""
  from m3video_jax.interop import export

  path = str(tmp_path / name)
  if name.endswith('.pth'):
    save(path, {'model': torch_state_dict(mu_params())})
  else:
    export.save_safetensors(mu_params(), path)
  os.truncate(path, os.path.getsize(path) // 2)
  for extra in ([], ['--allow_pickle']):
    assert import_weights.main([f'--input={path}', f'--output={tmp_path / "out"}', *extra]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f'error: {path} is not a readable ') and len(err.strip().splitlines()) == 1, err
    assert 'truncated or damaged' in err and 'allow_pickle' not in err
  assert not os.path.exists(tmp_path / 'out')
