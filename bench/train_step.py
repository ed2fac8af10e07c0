"""Pretraining-step speed on CPU: our jitted JAX step vs the PyTorch reference architecture, in one run.

  python bench/train_step.py                          # ViT-S, 16 x 112², batch 4, mask 0.7 (the issue's setting)
  python bench/train_step.py --variant=B --res=224 --batch=2 --steps=3

JAX: the full `train_step` (tube mask, targets, encoder on visible tokens, decoder, masked loss, AdamW update) as
`train_lib` jits it. PyTorch: transformers' `VideoMAEForPreTraining` with the same encoder/decoder sizes, mask ratio
and batch (forward with its pixel loss, backward, AdamW step). Each side runs in its own subprocess on all cores
(so the two runtimes' thread pools never compete), alternating `--rounds` times; the best and the median round of each
are reported (on a shared VM single rounds vary by ~10%).
Prints steps/s, clips/s and the JAX/PyTorch ratio (target >= 1.0).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

import numpy as np


def bench_jax(args) -> float:
  import jax
  from configs import pretrain_ssv2
  from m3video_jax import sharding, tasks, train_lib

  config = pretrain_ssv2.get_config(f'variant={args.variant},mask_ratio={args.mask_ratio}')
  with config.unlocked():
    config.data.update(num_frames=args.frames, res=args.res, batch_size=args.batch, train_files='unused')
    config.model.dtype = args.jax_dtype
    config.mesh.data = 1
  trainer = train_lib.make_trainer(config, sharding.make_mesh(config.mesh, devices=jax.devices()[:1]))
  step_fn, batch_shd = trainer.step_fn, trainer.batch_sharding
  state = trainer.init(jax.random.PRNGKey(0))
  rng = np.random.default_rng(0)
  batch = tasks.example_batch(config, args.batch)
  batch['video'] = rng.integers(0, 256, size=batch['video'].shape, dtype=np.uint8)
  batch['traj_disp'] = rng.normal(size=batch['traj_disp'].shape).astype(np.float32)
  batch['traj_valid'][:] = True
  batch['traj_hog'] = rng.random(batch['traj_hog'].shape).astype(np.float32)
  batch = sharding.to_global(batch, batch_shd)
  for _ in range(args.warmup):
    state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, m = step_fn(state, batch)
  jax.block_until_ready(m)
  return args.steps / (time.perf_counter() - start)


VIT_SIZES = {'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16), 'mu': (64, 2, 2)}


def bench_torch(args) -> float:
  import torch
  import transformers

  width, depth, heads = VIT_SIZES[args.variant]
  cfg = transformers.VideoMAEConfig(
      image_size=args.res, patch_size=16, num_channels=3, num_frames=args.frames, tubelet_size=2,
      hidden_size=width, num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=4 * width,
      hidden_act='gelu', qkv_bias=True, use_mean_pooling=False, layer_norm_eps=1e-6,
      decoder_hidden_size=192, decoder_num_hidden_layers=1, decoder_num_attention_heads=6,
      decoder_intermediate_size=768, norm_pix_loss=True)
  model = transformers.VideoMAEForPreTraining(cfg).train()
  opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05)
  t, hw = args.frames // 2, (args.res // 16) ** 2
  k = int(args.mask_ratio * hw)
  gen = torch.Generator().manual_seed(0)
  video = torch.randn(args.batch, args.frames, 3, args.res, args.res, generator=gen)

  def step():
    spatial = torch.zeros(args.batch, hw, dtype=torch.bool)
    for b in range(args.batch):
      spatial[b, torch.randperm(hw, generator=gen)[:k]] = True
    mask = spatial[:, None, :].expand(args.batch, t, hw).reshape(args.batch, t * hw)
    loss = model(pixel_values=video, bool_masked_pos=mask).loss
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss

  for _ in range(args.warmup):
    step()
  start = time.perf_counter()
  for _ in range(args.steps):
    step()
  return args.steps / (time.perf_counter() - start)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--variant', default='S', choices=sorted(VIT_SIZES))
  parser.add_argument('--frames', type=int, default=16)
  parser.add_argument('--res', type=int, default=112)
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--mask_ratio', type=float, default=0.7)
  parser.add_argument('--steps', type=int, default=10)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--jax_dtype', default='float32', choices=['float32', 'bfloat16'])
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--skip_torch', action='store_true')
  parser.add_argument('--side', default='', choices=['', 'jax', 'torch'], help=argparse.SUPPRESS)
  args, _ = parser.parse_known_args()

  if args.side:  # Child process: measure one side and print the figure.
    print(f'STEPS_PER_SEC {(bench_jax if args.side == "jax" else bench_torch)(args):.6f}')
    return
  sides = ['jax'] + ([] if args.skip_torch else ['torch'])
  runs = {s: [] for s in sides}
  for r in range(args.rounds):
    for side in sides:
      out = subprocess.run([sys.executable, os.path.abspath(__file__), f'--side={side}'] + sys.argv[1:],
                           check=True, capture_output=True, text=True).stdout
      sps = float(out.split('STEPS_PER_SEC')[-1].split()[0])
      print(f'round {r + 1} {side:5s}: {sps:.3f} steps/s', flush=True)
      runs[side].append(sps)
  print(f'machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores')
  print(f'setting: ViT-{args.variant}, {args.frames} x {args.res}², batch {args.batch}, mask {args.mask_ratio}, '
        f'{args.steps} timed steps after {args.warmup} warm-up, {args.rounds} rounds')
  best = {s: max(v) for s, v in runs.items()}
  median = {s: float(np.median(v)) for s, v in runs.items()}
  for side in sides:
    print(f'{side:8s}: best {best[side]:.3f} steps/s ({best[side] * args.batch:.2f} clips/s), '
          f'median {median[side]:.3f} steps/s')
  if 'torch' in best:
    print(f'ratio jax/pytorch: {best["jax"] / best["torch"]:.2f}x best vs best, '
          f'{median["jax"] / median["torch"]:.2f}x median vs median (target >= 1.0)')


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
