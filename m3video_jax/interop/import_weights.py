"""Imports PyTorch weights (reference MME/VideoMAE `.pth`, `.safetensors`, transformers dirs) as an orbax checkpoint.

  python -m m3video_jax.interop.import_weights --input=checkpoint-399.pth --output=/ckpt/mme_b_ssv2 [--encoder_only]
  python -m m3video_jax.interop.import_weights --input=/hf/videomae-base-finetuned-kinetics --output=/ckpt/videomae_k400

The output is a directory `<output>/checkpoints/0/` holding `{'params': ...}` (our parameter tree, see
`torch_mapping`) plus `<output>/config.json`, so `config.init_from=<output>`, `export` and `features.load_encoder`
accept it like a training workdir. What is accepted and how it is read: `weights.py`.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from typing import Any

import numpy as np

from m3video_jax import cli
from m3video_jax.interop import weights

PyTree = Any


def write_checkpoint(params: PyTree, config: Mapping[str, Any], output: str) -> str:
  """Writes `{'params': params}` as step 0 of `<output>/checkpoints` and `<output>/config.json`.

  Raises:
    FileExistsError: if `<output>/checkpoints` already holds a checkpoint.
  """
  import orbax.checkpoint as ocp

  from m3video_jax import checkpointing

  output = os.path.abspath(output)
  ckpt_dir = checkpointing.checkpoint_dir(output)
  if os.path.isdir(ckpt_dir) and ocp.utils.checkpoint_steps(ckpt_dir):
    raise FileExistsError(f'{ckpt_dir} already holds checkpoints; choose a new --output directory')
  os.makedirs(output, exist_ok=True)
  with ocp.CheckpointManager(ckpt_dir, options=ocp.CheckpointManagerOptions(create=True)) as manager:
    manager.save(0, args=ocp.args.StandardSave({'params': params}))
    manager.wait_until_finished()
  with open(os.path.join(output, 'config.json'), 'w') as f:
    json.dump(config, f, indent=2, sort_keys=True)
  return output


def import_weights(input_path: str, output: str, *, encoder_only: bool = False,
                   allow_pickle: bool = False) -> tuple[PyTree, dict[str, Any]]:
  """Reads `input_path`, converts it and writes the orbax checkpoint to `output`. Returns (params, config)."""
  state_dict, info = weights.read_state_dict(input_path, allow_pickle=allow_pickle)
  params, config = weights.convert(state_dict, info, source=input_path, encoder_only=encoder_only)
  write_checkpoint(params, config, output)
  return params, config


def define_flags(fv) -> None:
  from absl import flags

  flags.DEFINE_string('input', None, '.pth/.pt/.bin, .safetensors, or a transformers directory.', flag_values=fv,
                      required=True)
  flags.DEFINE_string('output', None, 'New directory for the orbax checkpoint (<output>/checkpoints/0) and '
                      'config.json.', flag_values=fv, required=True)
  flags.DEFINE_bool('encoder_only', False, 'Import only the encoder; drop (and log) decoder/classifier keys.',
                    flag_values=fv)
  flags.DEFINE_bool('allow_pickle', False, 'Unpickle a .pth fully (arbitrary code: trusted files only).',
                    flag_values=fv)


def _main(f, rest) -> None:
  del rest
  params, config = import_weights(f.input, f.output, encoder_only=f.encoder_only, allow_pickle=f.allow_pickle)
  n = sum(int(np.prod(np.shape(x))) for x in _leaves(params))
  output = os.path.abspath(f.output)
  print(f'imported {config["imported_from"]["layout"]} ({config["model"]["encoder"]}, '
        f'patch {config["model"]["patch_size"]}, {n:,} parameters) from {f.input} into {output}')
  if config['imported_from']['guessed_fields']:
    print(f'not stored in the source, set to the reference defaults: {config["imported_from"]["guessed_fields"]} '
          f'(data.num_frames={config["data"]["num_frames"]}, data.res={config["data"]["res"]})')
  cli.summary('done', [('orbax checkpoint', os.path.join(output, 'checkpoints')),
                       ('its config', os.path.join(output, 'config.json'))],
              [f'python -m m3video_jax.main --config=configs/finetune_ssv2.py --workdir=$WD --config.init_from={output}'
               ' ...  # or m3video_jax.load_encoder(path)'])


def main(argv=None) -> int:
  """The CLI (`m3video_jax.cli` convention); returns the exit status."""
  return cli.run(define_flags, _main, argv, doc=__doc__, prog='python -m m3video_jax.interop.import_weights',
                 errors=weights.USER_ERRORS)


def _leaves(tree: Any) -> list[Any]:
  if isinstance(tree, Mapping):
    return [x for v in tree.values() for x in _leaves(v)]
  return [tree]


if __name__ == '__main__':
  sys.exit(main())
