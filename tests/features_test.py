"""Feature extraction: what the encoder returns for each checkpoint kind, input checks, clips, the .npy writer."""
import csv
import os
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import m3video_jax
from m3video_jax.data import schema
from m3video_jax.interop import features
from m3video_jax.interop import import_weights
from m3video_jax.models import layers
from m3video_jax.models import vit

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def mu_encoder(seed=0):
  abstract = jax.eval_shape(vit.VideoViT('mu').init, jax.random.PRNGKey(0), np.zeros((1, 2, 16, 16, 3), np.float32))
  rng = np.random.default_rng(seed)
  return jax.tree_util.tree_map_with_path(
      lambda p, x: ((1.0 if jax.tree_util.keystr(p).endswith("['scale']") else 0.0)
                    + rng.normal(scale=0.05, size=x.shape)).astype(np.float32), abstract['params'])


def mu_classifier(num_classes=3, seed=0):
  enc = dict(mu_encoder(seed))
  enc.pop('norm')
  rng = np.random.default_rng(seed + 1)
  return {'encoder': enc,
          'fc_norm': {'scale': (1 + rng.normal(scale=0.1, size=64)).astype(np.float32),
                      'bias': rng.normal(scale=0.1, size=64).astype(np.float32)},
          'head': {'kernel': rng.normal(size=(64, num_classes)).astype(np.float32),
                   'bias': rng.normal(size=num_classes).astype(np.float32)}}


def clip(shape, seed=0):
  return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def normalise(video):
  mean, std = np.float32(schema.IMAGENET_MEAN), np.float32(schema.IMAGENET_STD)
  return (video.astype(np.float32) / 255.0 - mean) / std


def test_tokens_are_the_encoder_output_on_the_imagenet_normalised_clip():
  params = {'encoder': mu_encoder()}
  encoder = features.Encoder(params)
  video = clip((2, 4, 32, 48, 3))
  tokens = np.asarray(encoder(video))
  assert tokens.shape == (2, 2 * 2 * 3, 64) and tokens.dtype == np.float32
  expected = jax.jit(vit.VideoViT('mu').apply)({'params': params['encoder']}, normalise(video))
  np.testing.assert_allclose(tokens, expected, atol=1e-5)
  np.testing.assert_allclose(np.asarray(encoder.pooled(video)), tokens.mean(axis=1), atol=1e-6)
  assert (encoder.variant, encoder.patch_size, encoder.kind, encoder.final_norm) == ('mu', (2, 16, 16), 'encoder', True)


def test_classifier_features_are_last_block_tokens_and_the_head_input():
  params = mu_classifier()
  encoder = features.Encoder(params)
  video = clip((2, 4, 32, 32, 3), seed=1)
  tokens = np.asarray(encoder(video))
  # Normalising the last block's tokens with a plain LayerNorm gives VideoViT's output with an identity-affine norm.
  plain_norm = {'scale': np.ones(64, np.float32), 'bias': np.zeros(64, np.float32)}
  with_norm = jax.jit(vit.VideoViT('mu').apply)({'params': {**params['encoder'], 'norm': plain_norm}},
                                                normalise(video))
  ln = layers.layer_norm('n', np.float32)
  np.testing.assert_allclose(ln.apply({'params': plain_norm}, tokens), with_norm, atol=1e-5)
  pooled = ln.apply({'params': params['fc_norm']}, tokens.mean(axis=1))
  np.testing.assert_allclose(np.asarray(encoder.pooled(video)), pooled, atol=1e-5)
  logits = pooled @ params['head']['kernel'] + params['head']['bias']
  np.testing.assert_allclose(np.asarray(encoder.logits(video)), logits, atol=1e-4)
  from m3video_jax.models import classifier

  model = classifier.VideoClassifier('mu', num_classes=3)
  np.testing.assert_allclose(np.asarray(encoder.logits(video)),
                             jax.jit(model.apply, static_argnames='train')({'params': params}, normalise(video),
                                                                           train=False), atol=1e-5)


def test_bad_inputs_are_rejected():
  encoder = features.Encoder({'encoder': mu_encoder()})
  with pytest.raises(ValueError, match='expected uint8'):
    encoder(normalise(clip((1, 4, 32, 32, 3))))
  with pytest.raises(ValueError, match=r'expected \[B, T, H, W, 3\]'):
    encoder(clip((4, 32, 32, 3)))
  with pytest.raises(ValueError, match='multiples of the tubelet'):
    encoder(clip((1, 3, 32, 32, 3)))
  with pytest.raises(ValueError, match='needs a classifier'):
    encoder.logits(clip((1, 4, 32, 32, 3)))


def test_clips_are_strided_consecutive_and_the_last_one_padded():
  frames = [np.full((6, 8, 3), i, np.uint8) for i in range(10)]
  clips = list(features.clips_from_frames(iter(frames), num_frames=3, stride=3, res=4))
  assert [c[:, 0, 0, 0].tolist() for c in clips] == [[0, 3, 6], [9, 9, 9]]
  assert clips[0].shape == (3, 4, 4, 3)
  assert list(features.clips_from_frames(iter([]), 3, 1, 4)) == []


def test_output_names_keep_the_folders_below_the_root():
  paths = ['/d/v/a/x.mp4', '/d/v/b/y.avi']
  assert features.output_names(paths) == ['a/x.npy', 'b/y.npy']
  assert features.output_names(['/d/v/a/x.mp4'], root='/d/v') == ['a/x.npy']
  assert features.output_names(['/d/v/a/x.mp4']) == ['x.npy']


def test_output_names_stay_inside_the_output_dir_and_never_collide():
  # A list file's '../esc/x.mp4' used to become '<output_dir>/../esc/x.npy'.
  assert features.output_names(['/d/list/a.mp4', '/d/list/../esc/x.mp4']) == ['list/a.npy', 'esc/x.npy']
  assert features.output_names(['/d/v/./a/../b.mp4'], root='/d/v/') == ['b.npy']
  # Names that differ only by extension used to map to one file.
  assert features.output_names(['/d/dup.mp4', '/d/dup.avi', '/d/other.mp4']) == ['dup.mp4.npy', 'dup.avi.npy',
                                                                                 'other.npy']
  with pytest.raises(ValueError, match='more than once'):
    features.output_names(['/d/a.mp4', '/d/./a.mp4'])
  with pytest.raises(ValueError, match='not every video is below root'):
    features.output_names(['/d/v/../w/a.mp4'], root='/d/v')


def test_extract_of_a_list_with_dot_dot_and_extension_twins_writes_every_video_inside(tmp_path):
  from data_prep import inputs as inputs_lib
  from data_prep import synthetic

  encoder = features.Encoder({'encoder': mu_encoder()})
  for rel in ('lists/in/dup.mp4', 'lists/in/dup.avi', 'esc/x.mp4'):
    os.makedirs(os.path.dirname(tmp_path / rel), exist_ok=True)
    synthetic.write_mp4(str(tmp_path / rel), clip((4, 32, 32, 3)))
  (tmp_path / 'lists' / 'videos.txt').write_text('in/dup.mp4\nin/dup.avi\n../esc/x.mp4\n')
  videos = [v.path for v in inputs_lib.list_inputs(str(tmp_path / 'lists' / 'videos.txt')).videos]
  out = tmp_path / 'run' / 'feats'
  counts = features.extract(encoder, videos, str(out), num_frames=2, stride=1, res=32, show_progress=False)
  assert counts == {'done': 3, 'skipped': 0, 'failed': 0}  # The second twin was 'already present' in a fresh dir.
  written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob('*.npy'))
  assert written == ['run/feats/esc/x.npy', 'run/feats/lists/in/dup.avi.npy', 'run/feats/lists/in/dup.mp4.npy']
  index = list(csv.DictReader(open(out / 'index.csv')))
  assert sorted(r['features'] for r in index) == ['esc/x.npy', 'lists/in/dup.avi.npy', 'lists/in/dup.mp4.npy']


def test_extract_writes_one_npy_per_video_an_index_and_failures(tmp_path):
  from data_prep import synthetic

  params = {'encoder': mu_encoder()}
  import_weights.write_checkpoint(params, {'data': {'num_frames': 4, 'res': 32, 'frame_stride': 1}},
                                  str(tmp_path / 'ckpt'))
  encoder = m3video_jax.load_encoder(str(tmp_path / 'ckpt'))  # The lazy package-level entry point.
  assert encoder.config['data']['num_frames'] == 4
  videos = tmp_path / 'videos'
  for sub in ('x', 'y'):
    os.makedirs(videos / sub)
  frames = clip((9, 36, 44, 3))
  synthetic.write_mp4(str(videos / 'x' / 'a.mp4'), frames)
  open(videos / 'y' / 'bad.mp4', 'wb').close()
  paths = [str(videos / 'x' / 'a.mp4'), str(videos / 'y' / 'bad.mp4')]
  out = tmp_path / 'feats'
  counts = features.extract(encoder, paths, str(out), num_frames=4, stride=1, res=32, batch_size=2,
                            root=str(videos), show_progress=False)
  assert counts == {'done': 1, 'skipped': 0, 'failed': 1}
  feats = np.load(out / 'x' / 'a.npy')
  assert feats.shape == (3, 64)  # 9 frames -> clips of 4: [0-3], [4-7], [8 + 3 x padding].
  # The first clip's feature is the pooled feature of the same decoded, centre-cropped frames.
  from data_prep import video_io

  decoded, _ = video_io.read_video(paths[0], short_side=32)
  first = np.stack([features.centre_crop(f, 32) for f in decoded[:4]])[None]
  np.testing.assert_allclose(feats[0], np.asarray(encoder.pooled(first))[0], atol=1e-5)
  index = list(csv.DictReader(open(out / 'index.csv')))
  assert [(r['features'], r['num_clips'], r['frames_decoded']) for r in index] == [('x/a.npy', '3', '9')]
  failures = list(csv.DictReader(open(out / 'failures.csv')))
  assert [(r['video'], r['reason']) for r in failures] == [(paths[1], 'zero_byte')]
  # A rerun keeps what exists; tokens instead of pooled features when asked.
  assert features.extract(encoder, paths[:1], str(out), num_frames=4, stride=1, res=32, root=str(videos),
                          show_progress=False) == {'done': 0, 'skipped': 1, 'failed': 0}
  features.extract(encoder, paths[:1], str(out / 'tok'), num_frames=4, stride=2, res=32, pool='tokens',
                   show_progress=False)
  assert np.load(out / 'tok' / 'a.npy').shape == (2, 8, 64)  # 9 frames, stride 2 -> 5 sampled -> 2 clips.


def test_load_encoder_reads_a_pytorch_file(tmp_path):
  torch = pytest.importorskip('torch')
  from m3video_jax.interop import export

  params = mu_classifier()
  export.save_mme(params, str(tmp_path / 'ft.pth'))
  assert torch.load(str(tmp_path / 'ft.pth'), weights_only=True)['model']['head.weight'].shape == (3, 64)
  encoder = features.load_encoder(str(tmp_path / 'ft.pth'))
  video = clip((1, 4, 32, 32, 3))
  np.testing.assert_allclose(np.asarray(encoder.logits(video)),
                             np.asarray(features.Encoder(params).logits(video)), atol=1e-6)


def test_package_and_core_modules_import_without_torch():
  code = textwrap.dedent('''
      import importlib.abc, sys

      class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
          if name.split('.')[0] in ('torch', 'transformers', 'safetensors'):
            raise ImportError(f'{name} is blocked')

      sys.meta_path.insert(0, Block())
      import m3video_jax
      assert 'jax' not in sys.modules, 'import m3video_jax should not import jax'
      from m3video_jax.interop import export, features, import_weights, torch_mapping
      assert not {'torch', 'transformers', 'safetensors'} & set(sys.modules)
  ''')
  proc = subprocess.run([sys.executable, '-c', code], cwd=REPO, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr[-2000:]


def _two_checkpoints_and_videos(tmp_path, video_seeds: dict[str, int]) -> None:
  """`tmp_path/ckpt0`, `ckpt1` (mu encoders of seeds 0 and 1, 2-frame 32² clips) and `tmp_path/videos/<name>.mp4`."""
  from data_prep import synthetic

  for seed in (0, 1):
    import_weights.write_checkpoint({'encoder': mu_encoder(seed)}, {'data': {'num_frames': 2, 'res': 32,
                                                                             'frame_stride': 1}},
                                    str(tmp_path / f'ckpt{seed}'))
  os.makedirs(tmp_path / 'videos')
  for name, seed in video_seeds.items():
    synthetic.write_mp4(str(tmp_path / 'videos' / f'{name}.mp4'), clip((4, 32, 32, 3), seed=seed))


def test_features_of_another_checkpoint_or_settings_are_refused_or_recomputed_with_overwrite(tmp_path, capsys):
  """A re-run used to keep the .npy files of another checkpoint or --pool ("done 0, already present")."""
  _two_checkpoints_and_videos(tmp_path, {'a': 0})
  out = tmp_path / 'feats'

  def run(*args):
    status = features.main([f'--input={tmp_path / "videos"}', f'--output_dir={out}', *args])
    return status, capsys.readouterr()

  status, _ = run(f'--checkpoint={tmp_path / "ckpt0"}')
  first = np.load(out / 'a.npy')
  assert status == 0 and first.shape == (2, 64)
  status, printed = run(f'--checkpoint={tmp_path / "ckpt0"}')  # The same: kept (a killed job resumes).
  assert status == 0 and 'done 0, already present 1' in printed.out
  for args, changed in (([f'--checkpoint={tmp_path / "ckpt1"}'], f"checkpoint '{tmp_path / 'ckpt0' / 'checkpoints'}' "
                                                                  f"there, '{tmp_path / 'ckpt1' / 'checkpoints'}' now"),
                        ([f'--checkpoint={tmp_path / "ckpt0"}', '--pool=tokens'], "pool 'mean' there, 'tokens' now")):
    status, printed = run(*args)
    assert status == 1 and len(printed.err.strip().splitlines()) == 1, printed.err
    assert printed.err.startswith(f'error: --output_dir={out} holds features of another checkpoint or other '
                                  f'settings ({changed}') and 'pass --overwrite' in printed.err, printed.err
    np.testing.assert_array_equal(np.load(out / 'a.npy'), first)
  status, printed = run(f'--checkpoint={tmp_path / "ckpt1"}', '--pool=tokens', '--overwrite')
  assert status == 0 and 'done 1, already present 0' in printed.out
  assert np.load(out / 'a.npy').shape == (2, 1 * 2 * 2, 64)  # [clips, T/2 * H/16 * W/16, D]
  assert len(list(csv.DictReader(open(out / 'index.csv')))) == 1


def test_a_list_with_labels_features_do_not_use_is_read(tmp_path):
  """Data prep refuses a list giving a video two labels, or mixing class indices and names; features need no label."""
  (tmp_path / 'conflict.csv').write_text('a.mp4,0\nb.mp4,1\na.mp4,2\n')
  (tmp_path / 'mixed.csv').write_text('path,label\na.mp4,3\nsub/../b.mp4,cat\n')
  for name in ('conflict.csv', 'mixed.csv'):
    assert features.list_videos(str(tmp_path / name)) == [str(tmp_path / 'a.mp4'), str(tmp_path / 'b.mp4')], name


def test_a_killed_run_leaves_an_index_of_what_it_wrote_and_a_killed_overwrite_no_old_features(tmp_path, monkeypatch):
  _two_checkpoints_and_videos(tmp_path, {'a': ord('a'), 'b': ord('b')})
  out = tmp_path / 'feats'
  inputs = sorted(str(p) for p in (tmp_path / 'videos').iterdir())
  real = features.video_features
  run = lambda encoder, **kw: features.extract(encoder, inputs, str(out), num_frames=2, stride=1, res=32,
                                               show_progress=False, **kw)

  def killed_at_b(encoder, path, **kwargs):
    if path.endswith('b.mp4'):
      raise KeyboardInterrupt  # The job is killed while it computes the second video.
    return real(encoder, path, **kwargs)

  old, new = (features.load_encoder(str(tmp_path / f'ckpt{seed}')) for seed in (0, 1))
  monkeypatch.setattr(features, 'video_features', killed_at_b)
  with pytest.raises(KeyboardInterrupt):
    run(old)
  assert [row['features'] for row in csv.DictReader(open(out / 'index.csv'))] == ['a.npy']  # What it finished.
  monkeypatch.setattr(features, 'video_features', real)
  assert run(old) == {'done': 1, 'skipped': 1, 'failed': 0}  # The rerun resumes, and indexes both.
  assert sorted(row['features'] for row in csv.DictReader(open(out / 'index.csv'))) == ['a.npy', 'b.npy']
  # --overwrite with another checkpoint, killed at b: b's old features must not survive to be kept by a rerun.
  monkeypatch.setattr(features, 'video_features', killed_at_b)
  with pytest.raises(KeyboardInterrupt):
    run(new, overwrite=True)
  monkeypatch.setattr(features, 'video_features', real)
  assert run(new) == {'done': 1, 'skipped': 1, 'failed': 0}
  for path in inputs:
    name = os.path.basename(path).replace('.mp4', '.npy')
    np.testing.assert_allclose(np.load(out / name), real(new, path, num_frames=2, stride=1, res=32)[0], rtol=1e-6)
