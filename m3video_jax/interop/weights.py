"""Reads weights from anywhere into our parameter tree: PyTorch sources (reference MME/VideoMAE `.pth`,
`.safetensors`, transformers directories) converted by key layout, and our own orbax checkpoints (`load_weights`).

Accepted PyTorch inputs:
* `.pth` / `.pt` / `.bin`: a state dict, or a dict holding it under `model`, `module`, `model_state` or `state_dict`
  (reference and DeepSpeed checkpoints). Key prefixes `module.` (DDP), `encoder.` and `backbone.` are understood.
* `.safetensors`: a flat state dict with reference names (our `safetensors` export) or transformers names.
* a transformers directory (`config.json` + `model.safetensors`, a sharded index or `pytorch_model.bin`).

What is read is decided by the keys: an encoder (`patch_embed.*`, `blocks.*`, optional `norm.*`), a classifier
(plus `fc_norm.*`, `head.*`), or a pretraining model (plus `encoder_to_decoder.*`, `mask_token`, `decoder.*`, which must
fit our decoder: blocks, norm and one linear head; VideoMAE's `decoder.blocks.*` naming is accepted). Every expected key
must be present with the expected shape and no key may be left over; otherwise the error lists them. `encoder_only`
keeps just the encoder and drops (and logs) everything else, as the reference fine-tuning code does.

Returned with the weights, when the source has it: our config (our own exports), the transformers config (heads,
frames, resolution) or the reference's `args` (`num_frames`, `input_size`). Otherwise `data.num_frames` and `data.res`
are the reference defaults 16 and 224: weights do not record the clip shape (the position table is not a parameter, so
any clip shape works; the value only matters for the `hf` export's config).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from m3video_jax import cli
from m3video_jax.interop import torch_mapping
from m3video_jax.interop.torch_mapping import Layout, WeightMismatchError

PyTree = Any
REFERENCE_NUM_FRAMES, REFERENCE_RES = 16, 224
TORCH_EXTENSIONS = ('.pth', '.pt', '.bin', '.ckpt')
_WRAPPER_KEYS = ('model', 'module', 'model_state', 'state_dict')
# What the CLIs report as a one-line error (bad paths, keys, shapes, missing extras) instead of a traceback.
USER_ERRORS = cli.USER_ERRORS
_ENCODER_ONLY_HINT = ('pass --encoder_only (encoder_only=True) to import just the encoder and drop the rest, as the '
                      'reference fine-tuning code does')


def variant_for(width: int, depth: int, *, source: str = 'weights') -> str:
  """The encoder variant (`models/vit.py: VARIANTS`) with this width and depth.

  Raises:
    ValueError: naming the shapes found and the known variants.
  """
  from m3video_jax.models import vit

  for name, v in vit.VARIANTS.items():
    if (v.width, v.depth) == (width, depth):
      return name
  known = {name: (v.width, v.depth) for name, v in vit.VARIANTS.items()}
  raise ValueError(f'{source}: an encoder of width {width} and depth {depth} is no known variant; '
                   f'(width, depth) of the known variants: {known}')


def encoder_arch(encoder_params: Mapping[str, Any], *, source: str = 'params') -> tuple[str, tuple[int, int, int]]:
  """(variant, tubelet patch size) of our encoder parameters (numpy arrays or `ShapeDtypeStruct`s)."""
  kernel_shape = tuple(encoder_params['patch_embed']['kernel'].shape)  # [pt, ph, pw, C, D]
  depth = len([k for k in encoder_params if re.fullmatch(r'block_\d+', k)])
  return variant_for(kernel_shape[-1], depth, source=source), tuple(int(s) for s in kernel_shape[:3])


def _to_numpy(value: Any) -> Any:
  if hasattr(value, 'detach'):  # A torch tensor; bfloat16/float16 go through float32 (numpy has no bfloat16).
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return value


class UnreadableWeightsError(cli.UserError, ValueError):
  """A weights file that cannot be read at all (truncated, damaged, or not that format)."""


def _torch_load(path: str, allow_pickle: bool) -> Any:
  """Raises `UnreadableWeightsError` for a file torch cannot read, and a ValueError suggesting `--allow_pickle` only
  for one that holds Python objects beyond tensors (and the reference's argparse `args`)."""
  try:
    import torch
  except ImportError as e:
    raise ImportError(f'reading {path} needs PyTorch: pip install -e .[torch]') from e
  try:
    if allow_pickle:
      return torch.load(path, map_location='cpu', weights_only=False)
    # Reference checkpoints also pickle their argparse `args`; allow exactly that class besides tensors.
    with torch.serialization.safe_globals([argparse.Namespace]):
      return torch.load(path, map_location='cpu', weights_only=True)
  except OSError:  # Missing or unreadable file: its own message (the file is not damaged).
    raise
  except Exception as e:  # Truncated zip: RuntimeError; truncated pickle: EOFError/UnpicklingError; and others.
    refused = re.search(r'Unsupported global: GLOBAL (\S+)', str(e))
    if refused and not allow_pickle:
      raise ValueError(f'{path} holds Python objects beyond tensors ({refused.group(1)}); if you trust the file, pass '
                       '--allow_pickle (allow_pickle=True) to unpickle it fully') from e
    text = str(e).split('WeightsUnpickler error:')[-1].strip()  # Not torch's advice to load with weights_only=False.
    reason = f'{type(e).__name__}: {text.splitlines()[0][:200]}' if text else type(e).__name__
    raise UnreadableWeightsError(f'{path} is not a readable PyTorch checkpoint ({reason}); is it truncated or '
                                 'damaged (an interrupted download or copy)?') from e


def _read_safetensors(path: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  from safetensors import SafetensorError, safe_open

  try:
    import torch  # noqa: F401  # With torch, bfloat16 tensors load too.
    framework = 'pt'
  except ImportError:
    framework = 'np'
  out = {}
  try:
    with safe_open(path, framework=framework) as f:
      metadata = f.metadata() or {}
      for k in f.keys():
        out[k] = _to_numpy(f.get_tensor(k))
  except SafetensorError as e:  # A header or data that the file does not hold in full; no ValueError.
    raise UnreadableWeightsError(f'{path} is not a readable safetensors file ({e}); is it truncated or damaged (an '
                                 'interrupted download or copy)?') from e
  return out, metadata


def _is_hf_dir(path: str) -> bool:
  return os.path.isdir(path) and os.path.exists(os.path.join(path, 'config.json')) and any(
      os.path.exists(os.path.join(path, f)) for f in
      ('model.safetensors', 'model.safetensors.index.json', 'pytorch_model.bin', 'pytorch_model.bin.index.json'))


def is_torch_source(path: str) -> bool:
  """Whether `path` is a PyTorch weights file or a transformers directory (rather than an orbax checkpoint)."""
  return (os.path.isfile(path) and path.lower().endswith(TORCH_EXTENSIONS + ('.safetensors',))) or _is_hf_dir(path)


def _read_hf_dir(path: str, allow_pickle: bool) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  with open(os.path.join(path, 'config.json')) as f:
    hf_config = json.load(f)
  files = []
  for index_name in ('model.safetensors.index.json', 'pytorch_model.bin.index.json'):
    index = os.path.join(path, index_name)
    if os.path.exists(index):
      with open(index) as f:
        files = sorted(set(json.load(f)['weight_map'].values()))
      break
  else:
    files = ['model.safetensors'] if os.path.exists(os.path.join(path, 'model.safetensors')) else ['pytorch_model.bin']
  state_dict: dict[str, np.ndarray] = {}
  for name in files:
    file = os.path.join(path, name)
    if name.endswith('.safetensors'):
      state_dict.update(_read_safetensors(file)[0])
    else:
      state_dict.update({k: _to_numpy(v) for k, v in _torch_load(file, allow_pickle).items()})
  return state_dict, {'hf_config': hf_config}


def read_state_dict(path: str, *, allow_pickle: bool = False) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a PyTorch source into a flat `{name: numpy array}` dict, plus what it says about the model.

  Returns:
    (state dict, info) where info may hold `config` (our config dict, from our exports), `hf_config` (a transformers
    config dict) or `args` (the reference's argparse arguments as a dict).

  Raises:
    ValueError: if `path` is none of the accepted sources or holds no state dict.
  """
  if _is_hf_dir(path):
    return _read_hf_dir(path, allow_pickle)
  if not os.path.isfile(path):
    raise ValueError(f'--input={path} is not a file or a transformers directory (config.json + model.safetensors)')
  if path.lower().endswith('.safetensors'):
    state_dict, metadata = _read_safetensors(path)
    info = {'config': json.loads(metadata['m3video_config'])} if metadata.get('m3video_config') else {}
    return state_dict, info
  if not path.lower().endswith(TORCH_EXTENSIONS):
    raise ValueError(f'--input={path} has an unknown extension: expected one of {TORCH_EXTENSIONS + (".safetensors",)} '
                     'or a transformers directory')
  obj = _torch_load(path, allow_pickle)
  if not isinstance(obj, Mapping):
    raise ValueError(f'{path} holds a {type(obj).__name__}, not a state dict or a dict with one')
  info: dict[str, Any] = {}
  if isinstance(obj.get('m3video_config'), str):
    info['config'] = json.loads(obj['m3video_config'])
  if isinstance(obj.get('args'), argparse.Namespace):
    info['args'] = vars(obj['args'])
  for key in _WRAPPER_KEYS:
    if isinstance(obj.get(key), Mapping):
      obj = obj[key]
      break
  state_dict = {k: _to_numpy(v) for k, v in obj.items() if hasattr(v, 'shape')}
  if not state_dict:
    raise ValueError(f'{path} holds no tensors (top-level keys: {sorted(obj)[:20]}); expected a state dict or a dict '
                     f'with one under {_WRAPPER_KEYS}')
  return state_dict, info


def _strip(state_dict: Mapping[str, Any], prefix: str, only_if_all: bool = False) -> dict[str, Any]:
  if only_if_all and not all(k.startswith(prefix) for k in state_dict):
    return dict(state_dict)
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def _style_of(state_dict: Mapping[str, Any]) -> str:
  return 'hf' if any('embeddings.patch_embeddings.' in k for k in state_dict) else 'mme'


_MME_GROUPS = (('encoder', ('patch_embed.', 'blocks.', 'norm.')), ('classifier', ('fc_norm.', 'head.')),
               ('decoder', ('encoder_to_decoder.', 'decoder.', 'mask_token')))
_HF_GROUPS = (('encoder', ('embeddings.', 'encoder.layer.', 'layernorm.')), ('classifier', ('fc_norm.', 'classifier.')),
              ('decoder', ('encoder_to_decoder.', 'decoder.', 'mask_token')))


def _group(state_dict: Mapping[str, Any], groups) -> dict[str, dict[str, Any]]:
  out: dict[str, dict[str, Any]] = {name: {} for name, _ in groups}
  out['other'] = {}
  for k, v in state_dict.items():
    name = next((name for name, prefixes in groups if k.startswith(prefixes)), 'other')
    out[name][k] = v
  return out


def _normalise_mme(state_dict: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """Reference names -> groups of unprefixed encoder keys, classifier keys, MME-style decoder keys, other keys."""
  sd = _strip(state_dict, 'module.', only_if_all=True)
  sd = _strip(sd, 'backbone.')
  if 'encoder.patch_embed.proj.weight' in sd:  # Pretraining checkpoint: the encoder lives under `encoder.`.
    sd = _strip(sd, 'encoder.')
  if 'encoder_to_decoder.weight' in sd:  # VideoMAE's single decoder -> the MME `ModuleList` naming (index 0).
    sd = {('encoder_to_decoder.0.weight' if k == 'encoder_to_decoder.weight' else
           re.sub(r'^decoder\.(?!\d+\.)', 'decoder.0.', k)): v for k, v in sd.items()}
  return _group(sd, _MME_GROUPS)


def _indices(keys, pattern: str) -> list[int]:
  return sorted({int(m.group(1)) for k in keys if (m := re.match(pattern, k))})


def _shape(state_dict: Mapping[str, Any], key: str, ndim: int, source: str, expected: str) -> tuple[int, ...]:
  if key not in state_dict:
    raise WeightMismatchError(source, missing=[key])
  shape = tuple(np.shape(state_dict[key]))
  if len(shape) != ndim:
    raise WeightMismatchError(source, mismatched=[(key, shape, (expected,))])
  return shape


def encoder_template(variant: str, patch_size: tuple[int, int, int], final_norm: bool = True) -> dict[str, Any]:
  """Our encoder's parameter shapes (`ShapeDtypeStruct`s), without FLOPs."""
  import jax
  import jax.numpy as jnp

  from m3video_jax.models import vit

  model = vit.VideoViT(variant, tuple(patch_size))
  video = jnp.zeros((1, *patch_size, 3), jnp.float32)
  tree = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), video))['params']
  tree = dict(tree)
  if not final_norm:
    tree.pop('norm')
  return tree


def decoder_template(encoder_width: int, width: int, depth: int, output_dim: int) -> dict[str, Any]:
  """One decoder's parameter shapes (the head count does not change them)."""
  import jax
  import jax.numpy as jnp

  from m3video_jax.models import m3video

  model = m3video.Decoder(width, depth, 1, output_dim)
  x_vis = jnp.zeros((1, 1, encoder_width), jnp.float32)
  idx_vis, idx_hid = jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1), jnp.int32)
  return dict(jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x_vis, idx_vis, idx_hid, 2, train=False))[
      'params'])


def classifier_head_template(width: int, num_classes: int) -> dict[str, Any]:
  import jax

  f32 = np.float32
  return {'fc_norm': {'scale': jax.ShapeDtypeStruct((width,), f32), 'bias': jax.ShapeDtypeStruct((width,), f32)},
          'head': {'kernel': jax.ShapeDtypeStruct((width, num_classes), f32),
                   'bias': jax.ShapeDtypeStruct((num_classes,), f32)}}


def _import_mme(state_dict: Mapping[str, Any], source: str, encoder_only: bool) -> tuple[PyTree, Layout, dict]:
  groups = _normalise_mme(state_dict)
  enc, cls, dec, other = groups['encoder'], groups['classifier'], groups['decoder'], groups['other']
  dropped = {}
  if encoder_only:
    dropped = {**cls, **dec, **other}
    cls, dec, other = {}, {}, {}
  if other:
    raise WeightMismatchError(source, unexpected=sorted(other), hint=_ENCODER_ONLY_HINT)
  if cls and dec:
    raise ValueError(f'{source} holds both classifier keys {sorted(cls)[:4]} and decoder keys {sorted(dec)[:4]}; '
                     f'{_ENCODER_ONLY_HINT}')
  pt_w = _shape(enc, 'patch_embed.proj.weight', 5, source, '(D, 3, pt, ph, pw)')
  width, patch = pt_w[0], pt_w[2:]
  depth = max(_indices(enc, r'blocks\.(\d+)\.'), default=-1) + 1
  variant = variant_for(width, depth, source=f'{source} (patch_embed.proj.weight {pt_w}, {depth} blocks)')
  final_norm = 'norm.weight' in enc or 'norm.bias' in enc
  template: dict[str, Any] = {'encoder': encoder_template(variant, patch, final_norm)}
  extra: dict[str, Any] = {'variant': variant, 'patch_size': patch}
  if cls:
    num_classes = _shape(cls, 'head.weight', 2, source, '(num_classes, D)')[0]
    template.update(classifier_head_template(width, num_classes))
    layout_sd = {**enc, **cls}
    extra['num_classes'] = num_classes
  elif dec:
    n = max(_indices(dec, r'(?:encoder_to_decoder|decoder)\.(\d+)\.'), default=0) + 1
    names = ['decoder'] if n == 1 else [f'decoder_{i}' for i in range(n)]
    dims = []
    for i, name in enumerate(names):
      dec_width = _shape(dec, f'encoder_to_decoder.{i}.weight', 2, source, '(Dd, D)')[0]
      dec_depth = max(_indices(dec, rf'decoder\.{i}\.blocks\.(\d+)\.'), default=-1) + 1
      head = f'decoder.{i}.head.weight'
      if head not in dec:
        heads = sorted(k for k in dec if k.startswith(f'decoder.{i}.head.'))
        raise WeightMismatchError(source, missing=[head], unexpected=heads,
                                  hint='our decoder has one linear head (the reference MME decoder has two MLP heads); '
                                  + _ENCODER_ONLY_HINT)
      out_dim = _shape(dec, head, 2, source, '(O, Dd)')[0]
      template[name] = decoder_template(width, dec_width, dec_depth, out_dim)
      dims.append((dec_width, dec_depth, out_dim))
    layout_sd = {**{'encoder.' + k: v for k, v in enc.items()}, **dec}
    extra['decoders'] = dims
  else:
    layout_sd = enc
  params = torch_mapping.from_torch(layout_sd, template, 'mme', source=source,
                                    hint=_ENCODER_ONLY_HINT if (cls or dec) else '')
  if dropped:
    logging.info('%s: dropped %d non-encoder keys (encoder_only): %s', source, len(dropped), sorted(dropped)[:10])
  return params, torch_mapping.layout_of(template), extra


def _import_hf(state_dict: Mapping[str, Any], source: str, encoder_only: bool,
               hf_config: Mapping[str, Any] | None) -> tuple[PyTree, Layout, dict]:
  sd = _strip(torch_mapping.rename_hf_legacy(state_dict), 'videomae.')
  groups = _group(sd, _HF_GROUPS)
  enc, cls, other = groups['encoder'], groups['classifier'], {**groups['decoder'], **groups['other']}
  if encoder_only:
    if cls or other:
      logging.info('%s: dropped %d non-encoder keys (encoder_only): %s', source, len(cls) + len(other),
                   sorted({**cls, **other})[:10])
    cls, other = {}, {}
  if other:
    raise WeightMismatchError(source, unexpected=sorted(other),
                              hint='the transformers VideoMAE decoder has no counterpart here; ' + _ENCODER_ONLY_HINT)
  pt_w = _shape(enc, 'embeddings.patch_embeddings.projection.weight', 5, source, '(D, 3, pt, ph, pw)')
  width, patch = pt_w[0], pt_w[2:]
  depth = max(_indices(enc, r'encoder\.layer\.(\d+)\.'), default=-1) + 1
  variant = variant_for(width, depth, source=f'{source} (projection weight {pt_w}, {depth} layers)')
  if hf_config and 'num_attention_heads' in hf_config:
    from m3video_jax.models import vit

    heads = vit.VARIANTS[variant].num_heads
    if hf_config['num_attention_heads'] != heads:
      raise ValueError(f'{source}: num_attention_heads={hf_config["num_attention_heads"]} in config.json, but our '
                       f'variant {variant!r} of width {width} uses {heads} heads')
  final_norm = 'layernorm.weight' in enc or 'layernorm.bias' in enc
  template: dict[str, Any] = {'encoder': encoder_template(variant, patch, final_norm)}
  extra: dict[str, Any] = {'variant': variant, 'patch_size': patch}
  layout_sd = enc
  if cls:
    num_classes = _shape(cls, 'classifier.weight', 2, source, '(num_classes, D)')[0]
    template.update(classifier_head_template(width, num_classes))
    layout_sd = {**{'videomae.' + k: v for k, v in enc.items()}, **cls}
    extra['num_classes'] = num_classes
  params = torch_mapping.from_torch(layout_sd, template, 'hf', source=source)
  return params, torch_mapping.layout_of(template), extra


def convert(state_dict: Mapping[str, Any], info: Mapping[str, Any] | None = None, *, source: str = 'state dict',
            encoder_only: bool = False) -> tuple[PyTree, dict[str, Any]]:
  """A PyTorch state dict (reference or transformers names) -> (our params, a config dict describing them).

  Args:
    state_dict: flat `{name: array}` as read by `read_state_dict`.
    info: what `read_state_dict` found about the model (our config, transformers config, reference args).
    source: the input's name for messages.
    encoder_only: keep just the encoder, dropping (and logging) every other key.

  Returns:
    (params, config): params in one of our layouts (float32 numpy); config is our config when the source carried it,
    else a minimal one with `model.encoder`, `model.patch_size`, `data.num_frames`, `data.res` and the layout's
    fields, plus `imported_from`.

  Raises:
    WeightMismatchError: listing missing, unexpected and mis-shaped keys.
    ValueError: for an architecture none of our variants has.
  """
  info = dict(info or {})
  style = _style_of(state_dict)
  if style == 'hf':
    params, layout, extra = _import_hf(state_dict, source, encoder_only, info.get('hf_config'))
  else:
    params, layout, extra = _import_mme(state_dict, source, encoder_only)
  return params, _describe(layout, extra, info, source, style)


def _describe(layout: Layout, extra: Mapping[str, Any], info: Mapping[str, Any], source: str,
              style: str) -> dict[str, Any]:
  config = json.loads(json.dumps(info.get('config') or {}))  # A deep copy of our own config, when present.
  model, data = config.setdefault('model', {}), config.setdefault('data', {})
  hf, args = info.get('hf_config') or {}, info.get('args') or {}
  num_frames = data.get('num_frames') or hf.get('num_frames') or args.get('num_frames')
  res = data.get('res') or hf.get('image_size') or args.get('input_size')
  if isinstance(res, (list, tuple)):
    res = res[0]
  guessed = []
  if not num_frames:
    num_frames, guessed = REFERENCE_NUM_FRAMES, guessed + ['data.num_frames']
  if not res:
    res, guessed = REFERENCE_RES, guessed + ['data.res']
  data.update(num_frames=int(num_frames), res=int(res))
  model.update(encoder=extra['variant'], patch_size=[int(p) for p in extra['patch_size']])
  if layout.kind == 'classifier':
    config['task'] = 'finetune'
    model['num_classes'] = int(extra['num_classes'])
  elif layout.kind == 'pretrain':
    config.setdefault('task', 'pretrain')
    widths = {w for w, _, _ in extra['decoders']}
    depths = {d for _, d, _ in extra['decoders']}
    if len(widths) == 1 and len(depths) == 1:
      model.update(decoder_width=widths.pop(), decoder_depth=depths.pop())
    model['decoder_mode'] = 'joint' if len(extra['decoders']) == 1 else 'separate'
    if 'decoder_heads' not in model:  # Not stored in weights; the paper's (and VideoMAE's) decoders use 6.
      model['decoder_heads'] = 6
      guessed.append('model.decoder_heads')
    model['output_dims'] = [int(o) for _, _, o in extra['decoders']]
  else:
    config.setdefault('task', 'pretrain')
  config['imported_from'] = {'path': os.path.abspath(source) if os.path.exists(source) else source, 'style': style,
                             'layout': layout.kind, 'encoder_final_norm': layout.final_norm,
                             'guessed_fields': guessed}
  return config


def load_weights(path: str, step: int | None = None, *, encoder_only: bool = False,
                 allow_pickle: bool = False) -> tuple[PyTree, dict[str, Any] | None]:
  """Our params (host numpy) and config from an orbax checkpoint of ours or from any accepted PyTorch source.

  Args:
    path: a workdir, a `checkpoints/` dir, a step dir, an import output, a `.pth`/`.safetensors` file or a
      transformers directory.
    step: checkpoint step (orbax only; default latest).
    encoder_only, allow_pickle: see `convert` and `read_state_dict` (PyTorch sources only).

  Returns:
    (params, config dict or None when an orbax checkpoint has no config.json beside it).
  """
  from m3video_jax import checkpointing

  if is_torch_source(path):
    state_dict, info = read_state_dict(path, allow_pickle=allow_pickle)
    return convert(state_dict, info, source=path, encoder_only=encoder_only)
  ckpt_dir, step = checkpointing.resolve_checkpoint(path, step)
  return checkpointing.load_params(ckpt_dir, step), checkpointing.read_run_config(ckpt_dir)
