"""The one table between our Flax parameter trees and PyTorch state-dict names, used by export and import alike.

Two PyTorch naming styles:

* `mme`: the reference (MME / VideoMAE) names, e.g. `blocks.3.attn.qkv.weight`. A pretraining model prefixes its
  encoder with `encoder.` and adds `encoder_to_decoder.*`, `mask_token`, `decoder.*`; a classifier (the reference
  fine-tuning `VisionTransformer` with mean pooling) has no prefix and adds `fc_norm.*`, `head.*`.
* `hf`: transformers' `VideoMAEModel` / `VideoMAEForVideoClassification` names for transformers 5.x
  (`encoder.layer.3.attention.attention.query.bias`; 4.x called the q/v biases `q_bias` / `v_bias`, still accepted on
  import). The fused `qkv` kernel is split into `query` / `key` / `value`; there is no key bias. The decoder has no HF
  equivalent and is left out.

Our three parameter layouts (`Layout.kind`):

* `pretrain`: `{'encoder', 'decoder'}` or `{'encoder', 'decoder_0', 'decoder_1', ...}` (`models/m3video.py`).
* `classifier`: `{'encoder' (without its final `norm`), 'fc_norm', 'head'}` (`models/classifier.py`).
* `attentive`: `{'encoder' (without its final `norm`), 'pooler', 'head'}`: an attentive probe
  (`classifier.AttentivePooler`). Its pooler has no reference or transformers counterpart: its `mme` names are ours
  (`pooler.*`, PyTorch `nn.Linear` / `nn.LayerNorm` conventions, `pooler.query` of shape `(Q, D)`); `hf` holds the
  encoder only.
* `encoder`: `{'encoder'}` only (an encoder imported on its own, or the `safetensors` export).

Conversions (`Entry.kind`): `copy`; `linear` (Flax kernel `[in, out]` <-> PyTorch weight `(out, in)`); `conv3d` (Flax
`[pt, ph, pw, C, D]` <-> PyTorch `(D, C, pt, ph, pw)`). Arrays are host numpy float32 in both directions.
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

PyTree = Any
STYLES = ('mme', 'hf')

# One transformer block: (path inside our block, reference name inside `blocks.{i}.`, transformers name inside
# `encoder.layer.{i}.`, conversion). The qkv kernel's HF names are the three split projections.
BLOCK_TABLE: tuple[tuple[tuple[str, ...], str, tuple[str, ...], str], ...] = (
    (('norm1', 'scale'), 'norm1.weight', ('layernorm_before.weight',), 'copy'),
    (('norm1', 'bias'), 'norm1.bias', ('layernorm_before.bias',), 'copy'),
    (('attn', 'qkv', 'kernel'), 'attn.qkv.weight',
     ('attention.attention.query.weight', 'attention.attention.key.weight', 'attention.attention.value.weight'),
     'linear'),
    (('attn', 'q_bias'), 'attn.q_bias', ('attention.attention.query.bias',), 'copy'),
    (('attn', 'v_bias'), 'attn.v_bias', ('attention.attention.value.bias',), 'copy'),
    (('attn', 'proj', 'kernel'), 'attn.proj.weight', ('attention.output.dense.weight',), 'linear'),
    (('attn', 'proj', 'bias'), 'attn.proj.bias', ('attention.output.dense.bias',), 'copy'),
    (('norm2', 'scale'), 'norm2.weight', ('layernorm_after.weight',), 'copy'),
    (('norm2', 'bias'), 'norm2.bias', ('layernorm_after.bias',), 'copy'),
    (('mlp', 'fc1', 'kernel'), 'mlp.fc1.weight', ('intermediate.dense.weight',), 'linear'),
    (('mlp', 'fc1', 'bias'), 'mlp.fc1.bias', ('intermediate.dense.bias',), 'copy'),
    (('mlp', 'fc2', 'kernel'), 'mlp.fc2.weight', ('output.dense.weight',), 'linear'),
    (('mlp', 'fc2', 'bias'), 'mlp.fc2.bias', ('output.dense.bias',), 'copy'),
)

# transformers 4.x names of the attention biases -> the 5.x names written by the exporter.
HF_LEGACY_NAMES = {'attention.attention.q_bias': 'attention.attention.query.bias',
                   'attention.attention.v_bias': 'attention.attention.value.bias'}


@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: its path in our tree, its reference name, its transformers name(s) and the conversion."""
  ours: tuple[str, ...]
  mme: str
  hf: tuple[str, ...]  # () = no transformers equivalent (decoder); 3 names = the split qkv kernel
  kind: str  # 'copy' | 'linear' | 'conv3d'


@dataclasses.dataclass(frozen=True)
class Layout:
  """Which parameters a tree holds (see the module docstring).

  Attributes:
    kind: 'pretrain', 'classifier', 'attentive' or 'encoder'.
    depth: encoder blocks.
    final_norm: whether the encoder has its final LayerNorm (`encoder/norm`, PyTorch `norm.*`).
    decoder_depths: pretrain only: blocks of each decoder; one entry = the joint decoder (`decoder`), several =
      separate decoders (`decoder_0`, `decoder_1`, ...).
  """
  kind: str
  depth: int
  final_norm: bool
  decoder_depths: tuple[int, ...] = ()
  pool_mlp: bool = True  # attentive only: whether the pooler has its MLP (`model.pool_mlp`).

  @property
  def decoder_names(self) -> list[str]:
    n = len(self.decoder_depths)
    return ['decoder'] if n == 1 else [f'decoder_{i}' for i in range(n)]


class WeightMismatchError(ValueError):
  """A state dict does not fit the expected parameters: lists the missing, unexpected and mis-shaped keys."""

  def __init__(self, source: str, missing=(), unexpected=(), mismatched=(), hint: str = ''):
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    parts = []
    if self.missing:
      parts.append(f'missing keys ({len(self.missing)}): {self.missing[:20]}')
    if self.unexpected:
      parts.append(f'unexpected keys ({len(self.unexpected)}): {self.unexpected[:20]}')
    if self.mismatched:
      shown = [f'{k}: found {tuple(found)}, expected {tuple(want)}' for k, found, want in self.mismatched[:20]]
      parts.append(f'wrong shapes ({len(self.mismatched)}): {shown}')
    message = f'{source} does not fit: ' + '; '.join(parts)
    super().__init__(message + (f'. {hint}' if hint else ''))


def _block_entries(ours_prefix: tuple[str, ...], mme_prefix: str, hf_prefix: str | None) -> list[Entry]:
  return [Entry(ours_prefix + path, mme_prefix + mme,
                tuple(hf_prefix + name for name in hf) if hf_prefix is not None else (), kind)
          for path, mme, hf, kind in BLOCK_TABLE]


def _encoder_entries(layout: Layout, mme_prefix: str, hf_prefix: str | None) -> list[Entry]:
  hf = (lambda name: (hf_prefix + name,)) if hf_prefix is not None else (lambda name: ())
  out = [Entry(('encoder', 'patch_embed', 'kernel'), mme_prefix + 'patch_embed.proj.weight',
               hf('embeddings.patch_embeddings.projection.weight'), 'conv3d'),
         Entry(('encoder', 'patch_embed', 'bias'), mme_prefix + 'patch_embed.proj.bias',
               hf('embeddings.patch_embeddings.projection.bias'), 'copy')]
  for i in range(layout.depth):
    out += _block_entries(('encoder', f'block_{i:02d}'), f'{mme_prefix}blocks.{i}.',
                          f'{hf_prefix}encoder.layer.{i}.' if hf_prefix is not None else None)
  if layout.final_norm:
    out += [Entry(('encoder', 'norm', 'scale'), mme_prefix + 'norm.weight', hf('layernorm.weight'), 'copy'),
            Entry(('encoder', 'norm', 'bias'), mme_prefix + 'norm.bias', hf('layernorm.bias'), 'copy')]
  return out


def _decoder_entries(layout: Layout) -> list[Entry]:
  out = []
  for i, (name, depth) in enumerate(zip(layout.decoder_names, layout.decoder_depths)):
    p = f'decoder.{i}.'
    # The reference has one `mask_token`; the extra decoders of the "separate" mode keep theirs under their prefix.
    out += [Entry((name, 'encoder_to_decoder', 'kernel'), f'encoder_to_decoder.{i}.weight', (), 'linear'),
            Entry((name, 'mask_token'), 'mask_token' if i == 0 else p + 'mask_token', (), 'copy')]
    for j in range(depth):
      out += _block_entries((name, f'block_{j:02d}'), f'{p}blocks.{j}.', None)
    out += [Entry((name, 'norm', 'scale'), p + 'norm.weight', (), 'copy'),
            Entry((name, 'norm', 'bias'), p + 'norm.bias', (), 'copy'),
            # Our single linear head (the reference's two MLP heads `head.{0,1}.{0,2}` are not reproduced).
            Entry((name, 'head', 'kernel'), p + 'head.weight', (), 'linear'),
            Entry((name, 'head', 'bias'), p + 'head.bias', (), 'copy')]
  return out


def entries(layout: Layout) -> list[Entry]:
  """The full name table of a layout, in state-dict order."""
  if layout.kind == 'pretrain':
    return _encoder_entries(layout, 'encoder.', '') + _decoder_entries(layout)
  if layout.kind == 'classifier':
    return _encoder_entries(layout, '', 'videomae.') + [
        Entry(('fc_norm', 'scale'), 'fc_norm.weight', ('fc_norm.weight',), 'copy'),
        Entry(('fc_norm', 'bias'), 'fc_norm.bias', ('fc_norm.bias',), 'copy'),
        Entry(('head', 'kernel'), 'head.weight', ('classifier.weight',), 'linear'),
        Entry(('head', 'bias'), 'head.bias', ('classifier.bias',), 'copy')]
  if layout.kind == 'attentive':
    return _encoder_entries(layout, '', '') + _pooler_entries(layout.pool_mlp) + [
        Entry(('head', 'kernel'), 'head.weight', (), 'linear'), Entry(('head', 'bias'), 'head.bias', (), 'copy')]
  if layout.kind == 'encoder':
    return _encoder_entries(layout, '', '')
  raise ValueError(f'layout kind={layout.kind!r} is unknown: expected pretrain, classifier, attentive or encoder')


def _pooler_entries(mlp: bool) -> list[Entry]:
  """The attentive pooler's names (no transformers counterpart)."""
  out = [Entry(('pooler', 'query'), 'pooler.query', (), 'copy')]
  layers = ['norm_tokens', 'q', 'k', 'v', 'proj'] + (['norm_mlp', 'mlp/fc1', 'mlp/fc2'] if mlp else [])
  for name in layers:
    path, torch_name = tuple(name.split('/')), 'pooler.' + name.replace('/', '.')
    if name.startswith('norm'):
      out += [Entry(('pooler',) + path + ('scale',), torch_name + '.weight', (), 'copy'),
              Entry(('pooler',) + path + ('bias',), torch_name + '.bias', (), 'copy')]
    else:
      out += [Entry(('pooler',) + path + ('kernel',), torch_name + '.weight', (), 'linear'),
              Entry(('pooler',) + path + ('bias',), torch_name + '.bias', (), 'copy')]
  return out


def _count_blocks(tree: Mapping[str, Any], where: str) -> int:
  names = sorted(k for k in tree if re.fullmatch(r'block_\d+', k))
  if names != [f'block_{i:02d}' for i in range(len(names))]:
    raise ValueError(f'{where} blocks are not numbered block_00 ... block_{len(names) - 1:02d}: {names}')
  return len(names)


def layout_of(params: Mapping[str, Any]) -> Layout:
  """The layout of one of our parameter trees (numpy arrays or `ShapeDtypeStruct`s).

  Raises:
    ValueError: if the top-level keys are none of the three layouts.
  """
  top = set(params)
  if 'encoder' not in top:
    raise ValueError(f'params have no "encoder" subtree (top-level keys: {sorted(top)})')
  depth = _count_blocks(params['encoder'], 'encoder')
  final_norm = 'norm' in params['encoder']
  rest = top - {'encoder'}
  if not rest:
    return Layout('encoder', depth, final_norm)
  if rest == {'fc_norm', 'head'}:
    return Layout('classifier', depth, final_norm)
  if rest == {'pooler', 'head'}:
    return Layout('attentive', depth, final_norm, pool_mlp='mlp' in params['pooler'])
  if rest == {'decoder'}:
    return Layout('pretrain', depth, final_norm, (_count_blocks(params['decoder'], 'decoder'),))
  separate = [f'decoder_{i}' for i in range(len(rest))]
  if rest == set(separate):
    return Layout('pretrain', depth, final_norm, tuple(_count_blocks(params[n], n) for n in separate))
  raise ValueError(f'params with top-level keys {sorted(top)} are not a pretraining model (encoder, decoder[_i]), '
                   'a classifier (encoder, fc_norm, head), an attentive probe (encoder, pooler, head) or an encoder')


def _get(tree: Mapping[str, Any], path: tuple[str, ...]) -> Any:
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def _flat_paths(tree: Mapping[str, Any], prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
  out = []
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out += _flat_paths(v, prefix + (k,))
    else:
      out.append(prefix + (k,))
  return out


def ours_to_torch_array(kind: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if kind == 'linear':
    return np.ascontiguousarray(x.T)
  if kind == 'conv3d':
    return np.ascontiguousarray(x.transpose(4, 3, 0, 1, 2))
  return np.ascontiguousarray(x)


def torch_to_ours_array(kind: str, x: np.ndarray) -> np.ndarray:
  x = np.asarray(x)
  if kind == 'linear':
    return np.ascontiguousarray(x.T)
  if kind == 'conv3d':
    return np.ascontiguousarray(x.transpose(2, 3, 4, 1, 0))
  return np.ascontiguousarray(x)


def torch_shape(kind: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of one of our leaves of `shape`."""
  if kind == 'linear':
    return tuple(reversed(shape))
  if kind == 'conv3d':
    return tuple(shape[i] for i in (4, 3, 0, 1, 2))
  return tuple(shape)


def to_torch(params: Mapping[str, Any], style: str = 'mme') -> dict[str, np.ndarray]:
  """Our parameters -> a flat `{torch name: numpy array}` state dict.

  Args:
    params: one of our parameter trees (host numpy or anything `np.asarray` accepts).
    style: 'mme' (reference names) or 'hf' (transformers 5.x names; decoder parameters are left out).

  Raises:
    ValueError: on an unknown style, or a leaf of `params` that the table does not name (a model change the table
      has not followed).
  """
  if style not in STYLES:
    raise ValueError(f'style={style!r} is unknown: expected one of {STYLES}')
  layout = layout_of(params)
  table = entries(layout)
  unnamed = sorted(set(_flat_paths(params)) - {e.ours for e in table})
  if unnamed:
    raise ValueError(f'params {["/".join(p) for p in unnamed][:10]} have no PyTorch name in torch_mapping')
  out: dict[str, np.ndarray] = {}
  for e in table:
    x = ours_to_torch_array(e.kind, np.asarray(_get(params, e.ours), np.float32))
    if style == 'mme':
      out[e.mme] = x
    elif len(e.hf) == 1:
      out[e.hf[0]] = x
    elif len(e.hf) == 3:  # (3D, D) rows [q; k; v] -> three (D, D) projections.
      for name, part in zip(e.hf, np.split(x, 3, axis=0)):
        out[name] = np.ascontiguousarray(part)
  return out


def rename_hf_legacy(state_dict: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """transformers 4.x `...attention.attention.q_bias / v_bias` -> the 5.x `query.bias / value.bias`."""
  out = {}
  for k, v in state_dict.items():
    for old, new in HF_LEGACY_NAMES.items():
      if k.endswith(old):
        k = k[:-len(old)] + new
    out[k] = v
  return out


def from_torch(state_dict: Mapping[str, np.ndarray], template: Mapping[str, Any], style: str = 'mme', *,
               source: str = 'state dict', hint: str = '') -> dict[str, Any]:
  """A flat PyTorch state dict -> our parameter tree shaped like `template`, checking every key and shape.

  Args:
    state_dict: `{torch name: numpy array}` (already unwrapped from `{'model': ...}` and stripped of prefixes).
    template: our parameter tree (arrays or `ShapeDtypeStruct`s) that decides the layout and the expected shapes.
    style: 'mme' or 'hf'.
    source: how to name the input in error messages (e.g. the file path).
    hint: appended to the error message.

  Returns:
    The parameter tree (nested dicts of float32 numpy arrays), with exactly the leaves of `template`.

  Raises:
    WeightMismatchError: listing every missing, unexpected and mis-shaped key; nothing is filled in silently.
  """
  if style not in STYLES:
    raise ValueError(f'style={style!r} is unknown: expected one of {STYLES}')
  if style == 'hf':
    state_dict = rename_hf_legacy(state_dict)
  table = entries(layout_of(template))
  if style == 'hf' and any(not e.hf for e in table):
    raise ValueError('transformers checkpoints hold no decoder: import them into an encoder or classifier layout')
  expected: dict[str, tuple[int, ...]] = {}
  for e in table:
    shape = torch_shape(e.kind, tuple(_get(template, e.ours).shape))
    if style == 'mme':
      expected[e.mme] = shape
    else:
      for name in e.hf:
        expected[name] = (shape[0] // len(e.hf),) + shape[1:]
  missing = [k for k in expected if k not in state_dict]
  unexpected = sorted(k for k in state_dict if k not in expected)
  mismatched = [(k, np.shape(state_dict[k]), expected[k]) for k in expected
                if k in state_dict and tuple(np.shape(state_dict[k])) != expected[k]]
  if missing or unexpected or mismatched:
    raise WeightMismatchError(source, missing, unexpected, mismatched, hint)
  params: dict[str, Any] = {}
  for e in table:
    names = (e.mme,) if style == 'mme' else e.hf
    x = np.concatenate([np.asarray(state_dict[n]) for n in names], axis=0) if len(names) > 1 else state_dict[names[0]]
    _set(params, e.ours, torch_to_ours_array(e.kind, np.asarray(x, np.float32)))
  return params


def markdown_table(layout: Layout) -> str:
  """The name table of a layout as Markdown rows (ours | reference | transformers), for docs."""
  rows = ['| ours | reference (`mme`) | transformers (`hf`) | conversion |', '|---|---|---|---|']
  for e in entries(layout):
    rows.append(f'| `{"/".join(e.ours)}` | `{e.mme}` | {", ".join(f"`{n}`" for n in e.hf) or "-"} | {e.kind} |')
  return '\n'.join(rows)
