"""Exports a checkpoint to PyTorch: the reference's `.pth`, a transformers directory, or raw safetensors.

  python -m m3video_jax.interop.export --checkpoint=$WORKDIR [--step=N] --format=mme --output=/out/checkpoint.pth
  python -m m3video_jax.interop.export --checkpoint=$WORKDIR --format=hf --output=/out/videomae_hf
  python -m m3video_jax.interop.export --checkpoint=$WORKDIR --format=safetensors --output=/out/encoder.safetensors

Formats (key names: `torch_mapping`, `docs/export.md`):
* `mme`: `torch.save({'model': state_dict, 'm3video_config': <our config as JSON>})` with the reference's names. A
  pretraining checkpoint gives `encoder.*`, `encoder_to_decoder.{i}.weight`, `mask_token`, `decoder.{i}.*` (our decoder
  has one linear head where the reference has two MLP heads, so only the reference's fine-tuning code, which keeps the
  encoder, can load it); a classifier gives the reference fine-tuning model's keys (`patch_embed.*`, `blocks.*`,
  `fc_norm.*`, `head.*`).
* `hf`: `config.json` + `model.safetensors` for transformers 5.x: `VideoMAEModel.from_pretrained(dir)` (an encoder;
  with its final LayerNorm as `layernorm`, `use_mean_pooling=False`) or `VideoMAEForVideoClassification` (a
  classifier). The decoder has no transformers equivalent and is left out. `layer_norm_eps` is 1e-6 as ours; the HF
  classifier's `fc_norm` has a fixed eps of 1e-5 (set `model.fc_norm.eps = 1e-6` after loading for exact logits).
  `num_frames` and `image_size` come from the checkpoint's config.json (`data.num_frames`, `data.res`) unless given.
* `safetensors`: the encoder with the reference's unprefixed names (`patch_embed.*`, `blocks.*`, `norm.*`), plus
  `fc_norm.*` / `head.*` for a classifier; our config in the metadata (`m3video_config`).

An attentive probe (`task='attentive_probe'`: encoder, `pooler`, `head`): `mme` and `safetensors` hold all three, the
pooler under our own names (`pooler.query` `(Q, D)`, `pooler.{norm_tokens,q,k,v,proj,norm_mlp,mlp.fc1,mlp.fc2}.*`,
`torch_mapping`; the pooler's heads are `model.pool_heads` of the config stored beside them, 0 = the encoder's);
`hf` holds the encoder only (`VideoMAEModel`, `use_mean_pooling=True`): transformers has no attentive pooler.

An existing output (the file; for `hf` a non-empty directory) is refused unless `--overwrite`, which replaces the file
(`hf`: its `config.json` and `model.safetensors`). Runs on the host only: parameters are restored as numpy arrays
(from any sharding), no accelerator is needed.
"""
from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from m3video_jax import cli
from m3video_jax.interop import weights
from m3video_jax.interop import torch_mapping

FORMATS = ('mme', 'hf', 'safetensors')
PyTree = Any


def encoder_part(params: Mapping[str, Any], fmt: str = 'safetensors') -> dict[str, Any]:
  """What `hf` and `safetensors` export: the encoder, plus a classifier's `fc_norm`/`head` and (`safetensors`
  only) an attentive probe's `pooler`/`head`."""
  layout = torch_mapping.layout_of(params)
  if layout.kind == 'pretrain' or (layout.kind == 'attentive' and fmt == 'hf'):
    return {'encoder': params['encoder']}
  return dict(params)


def save_mme(params: PyTree, output: str, config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Writes the reference-layout `.pth`. Returns the numpy state dict written."""
  try:
    import torch
  except ImportError as e:
    raise ImportError('--format=mme needs PyTorch: pip install -e .[torch]') from e
  state_dict = torch_mapping.to_torch(params, 'mme')
  payload = {'model': {k: torch.from_numpy(v) for k, v in state_dict.items()}}
  if config is not None:
    payload['m3video_config'] = json.dumps(config, sort_keys=True)  # A plain string: loads with weights_only=True.
  _makedirs_for(output)
  torch.save(payload, output)
  _ordinary_permissions(output)
  return state_dict


def save_safetensors(params: PyTree, output: str, config: Mapping[str, Any] | None = None) -> dict[str, np.ndarray]:
  """Writes the encoder (and classifier head) with the reference names. Returns the state dict written."""
  from safetensors.numpy import save_file

  state_dict = torch_mapping.to_torch(encoder_part(params), 'mme')
  metadata = {'format': 'pt'}
  if config is not None:
    metadata['m3video_config'] = json.dumps(config, sort_keys=True)
  _makedirs_for(output)
  save_file(state_dict, output, metadata=metadata)
  _ordinary_permissions(output)
  return state_dict


def hf_config(params: PyTree, *, num_frames: int, image_size: int | tuple[int, int]) -> dict[str, Any]:
  """The transformers `VideoMAEConfig` fields (config.json) of our encoder or classifier parameters.

  `image_size` is the square side, or `(H, W)`: transformers checks every input against it and sizes its position
  table from it.

  Written as plain JSON so the export does not import transformers; the fields are the 5.x `VideoMAEConfig` ones
  (`qv_bias`), missing ones take transformers' defaults (only the decoder's, unused here).
  """
  from m3video_jax.models import vit

  part = encoder_part(params, 'hf')
  layout = torch_mapping.layout_of(part)
  variant, (pt, ph, pw) = weights.encoder_arch(part['encoder'])
  if ph != pw:
    raise ValueError(f'transformers VideoMAE needs square patches; this encoder has {ph}x{pw}')
  v = vit.VARIANTS[variant]
  if not isinstance(image_size, int):
    image_size = [int(s) for s in image_size]
  config = dict(model_type='videomae', image_size=image_size, patch_size=ph, num_channels=3, num_frames=num_frames,
                tubelet_size=pt, hidden_size=v.width, num_hidden_layers=v.depth, num_attention_heads=v.num_heads,
                intermediate_size=v.mlp_dim, hidden_act='gelu', hidden_dropout_prob=0.0,
                attention_probs_dropout_prob=0.0, initializer_range=0.02, layer_norm_eps=1e-6, qv_bias=True)
  if layout.kind == 'classifier':
    if layout.final_norm:
      raise ValueError('transformers VideoMAEForVideoClassification has no final encoder LayerNorm with mean pooling; '
                       'this classifier has one (encoder/norm)')
    num_classes = int(part['head']['kernel'].shape[-1])
    labels = {str(i): f'LABEL_{i}' for i in range(num_classes)}
    return dict(config, architectures=['VideoMAEForVideoClassification'], use_mean_pooling=True, id2label=labels,
                label2id={name: int(i) for i, name in labels.items()})
  # An encoder: with its final LayerNorm it is VideoMAEModel's `layernorm` (use_mean_pooling=False); without it
  # (a classifier's trunk) use_mean_pooling=True leaves that LayerNorm out.
  return dict(config, architectures=['VideoMAEModel'], use_mean_pooling=not layout.final_norm)


def save_hf(params: PyTree, output: str, *, num_frames: int,
            image_size: int | tuple[int, int]) -> dict[str, np.ndarray]:
  """Writes `config.json` + `model.safetensors` loadable by transformers 5.x. Returns the state dict written."""
  from safetensors.numpy import save_file

  part = encoder_part(params, 'hf')
  kind = torch_mapping.layout_of(params).kind
  if kind in ('pretrain', 'attentive'):
    what = 'pretraining decoder' if kind == 'pretrain' else 'attentive pooler and its head'
    logging.info('hf export: transformers has no equivalent of the %s; exporting the encoder only', what)
  config = hf_config(part, num_frames=num_frames, image_size=image_size)
  state_dict = torch_mapping.to_torch(part, 'hf')
  os.makedirs(output, exist_ok=True)
  with open(os.path.join(output, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  save_file(state_dict, os.path.join(output, 'model.safetensors'), metadata={'format': 'pt'})
  _ordinary_permissions(os.path.join(output, 'model.safetensors'))
  return state_dict


def _makedirs_for(path: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)


def _ordinary_permissions(path: str) -> None:
  """Gives `path` the mode a plain `open()` gives a new file (0666 less the umask): safetensors writes 0600. The mode
  is read off a file created for it (changing the process umask to read it would race other threads' files)."""
  probe = f'{path}.mode-{os.getpid()}'
  with open(probe, 'w'):
    pass
  try:
    os.chmod(path, os.stat(probe).st_mode & 0o777)
  finally:
    os.remove(probe)


def check_output(fmt: str, output: str, overwrite: bool = False) -> None:
  """Refuses an `output` of the wrong kind for `fmt`, or one that exists (`hf`: a non-empty directory) unless
  `overwrite`, before any weights are read.

  Raises:
    cli.UserError: naming `output` and what to do.
  """
  if fmt == 'hf':
    if os.path.exists(output) and not os.path.isdir(output):
      raise cli.UserError(f'--output={output} is a file; --format=hf writes a directory (config.json + '
                          'model.safetensors)')
    if os.path.isdir(output) and os.listdir(output) and not overwrite:
      raise cli.UserError(f'--output={output} is a directory that is not empty ({sorted(os.listdir(output))[:5]}); '
                          'pass --overwrite to replace its config.json and model.safetensors, or give a new directory')
  elif os.path.isdir(output):
    raise cli.UserError(f'--output={output} is a directory; --format={fmt} writes one file, e.g. '
                        f'--output={os.path.join(output, "model.pth" if fmt == "mme" else "encoder.safetensors")}')
  elif os.path.exists(output) and not overwrite:
    raise cli.UserError(f'--output={output} exists; pass --overwrite to replace it, or give a new file name')


def clip_shape(config: Mapping[str, Any] | None, num_frames: int | None, res: int | None) -> tuple[int, int]:
  """(num_frames, res) from the flags, else the checkpoint's config, else the reference's 16 x 224 (logged)."""
  data = (config or {}).get('data', {})
  frames = num_frames or data.get('num_frames')
  size = res or data.get('res')
  if not frames or not size:
    logging.warning('no num_frames/res in the flags or the checkpoint config; using the reference 16 frames x 224 px')
  return int(frames or weights.REFERENCE_NUM_FRAMES), int(size or weights.REFERENCE_RES)


def export(checkpoint: str, fmt: str, output: str, *, step: int | None = None, num_frames: int | None = None,
           res: int | None = None, overwrite: bool = False) -> dict[str, np.ndarray]:
  """Exports `checkpoint` (a workdir, checkpoints dir, step dir, import output or PyTorch source) to `output`.

  Args:
    checkpoint: where the parameters are (see `weights.load_weights`).
    fmt: 'mme', 'hf' or 'safetensors'.
    output: the `.pth` / `.safetensors` file, or the directory for `hf`.
    step: orbax step (default: latest).
    num_frames, res: clip shape for the `hf` config (default: the checkpoint's config.json).
    overwrite: replace an existing output (`check_output`).

  Returns:
    The numpy state dict written.
  """
  if fmt not in FORMATS:
    raise ValueError(f'--format={fmt!r} is unknown: expected one of {FORMATS}')
  check_output(fmt, output, overwrite)
  params, config = weights.load_weights(checkpoint, step)
  if fmt == 'mme':
    return save_mme(params, output, config)
  if fmt == 'safetensors':
    return save_safetensors(params, output, config)
  frames, size = clip_shape(config, num_frames, res)
  return save_hf(params, output, num_frames=frames, image_size=size)


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('checkpoint', None, 'Workdir, checkpoints dir or step dir (or an import output / PyTorch file).',
                      flag_values=fv, required=True)
  flags.DEFINE_integer('step', None, 'Checkpoint step; default: the latest.', flag_values=fv)
  flags.DEFINE_enum('format', None, list(FORMATS), 'mme: reference .pth; hf: transformers dir; safetensors: encoder.',
                    flag_values=fv, required=True)
  flags.DEFINE_string('output', None, '.pth / .safetensors file, or a directory for --format=hf.', flag_values=fv,
                      required=True)
  flags.DEFINE_integer('num_frames', None, 'hf config num_frames (default: data.num_frames of the checkpoint config).',
                       flag_values=fv)
  flags.DEFINE_integer('res', None, 'hf config image_size (default: data.res of the checkpoint config).',
                       flag_values=fv)
  flags.DEFINE_bool('overwrite', False, 'Replace an existing --output file (hf: the files of a non-empty directory).',
                    flag_values=fv)


def _main(f, rest) -> None:
  del rest
  state_dict = export(f.checkpoint, f.format, f.output, step=f.step, num_frames=f.num_frames, res=f.res,
                      overwrite=f.overwrite)
  n = sum(v.size for v in state_dict.values())
  output = os.path.abspath(f.output)
  nxt = {'mme': f'python -m m3video_jax.interop.import_weights --input={output} --output={output}.imported',
         'hf': f"python -c \"from transformers import AutoModel; print(AutoModel.from_pretrained('{output}'))\"",
         'safetensors': f"python -c \"from safetensors.numpy import load_file; print(len(load_file('{output}')))\""}
  cli.summary(f'wrote {len(state_dict)} tensors ({n:,} parameters) to {output} ({f.format})',
              [('exported weights', output)], [nxt[f.format]])


def main(argv=None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m m3video_jax.interop.export',
                 errors=weights.USER_ERRORS)


if __name__ == '__main__':
  sys.exit(main())
