"""How exactly does data prep track the synthetic objects? Stored first-step displacements against the generator's
exact motion, for prep sizes, flow methods and camera-motion removal (docs/results.md, "Flow accuracy of the prep").

  python experiments/flow_accuracy.py [--videos=16 --size=96 --frames=24 --object_scale=1.6 --seed=0]

Per setting: the error of the first step of every trajectory that starts at least 4 native px inside the object, in
native px (median and mean), the median over starts of stored / true motion length, and the prep time of all videos
on one process (`data_prep.video_targets.extract_from_frames` on frames resized with OpenCV, as the prep does).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_prep import synthetic  # noqa: E402
from data_prep import video_targets  # noqa: E402
from data_prep.options import PrepConfig  # noqa: E402
from m3video_jax.data import schema  # noqa: E402

SETTINGS = ((2, 'dis_fast', 'compose'), (1, 'dis_fast', 'compose'), (1, 'dis_medium', 'compose'),
            (2, 'dis_medium', 'compose'), (1, 'dis_medium', 'none'), (1, 'dis_fine', 'compose'), (2, 'dis_fine', 'compose'))


def measure(specs, videos, upscale: int, flow: str, camera: str) -> dict[str, float]:
  errors, ratios = [], []
  t0 = time.perf_counter()
  for spec, frames in zip(specs, videos):
    size = (spec.width * upscale, spec.height * upscale)
    resized = [cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames] if upscale > 1 else list(frames)
    config = PrepConfig(short_side=0, traj_len=4, flow=flow, camera_motion=camera)
    targets = video_targets.extract_from_frames(iter(resized), config)
    x0, y0 = schema.start_positions(*targets.traj_valid.shape[1:])
    xn, yn = (x0 + 0.5) / upscale - 0.5, (y0 + 0.5) / upscale - 0.5  # Prep px -> native px.
    for i in range(targets.traj_disp.shape[0]):
      frame = i * config.traj_start_stride
      on = synthetic.object_mask(spec, frame, xn, yn, margin=4)
      if not on.any():
        continue
      truth = synthetic.object_step(spec, frame, xn, yn, with_camera=False)[on] * upscale
      stored = targets.traj_disp[i, 0][on]
      errors.append(np.linalg.norm(stored - truth, axis=-1) / upscale)
      ratios.append(np.linalg.norm(stored, axis=-1).sum() / max(np.linalg.norm(truth, axis=-1).sum(), 1e-9))
  e = np.concatenate(errors)
  return {'median_error': float(np.median(e)), 'mean_error': float(e.mean()), 'length_ratio': float(np.median(ratios)),
          'seconds': time.perf_counter() - t0}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--videos', type=int, default=16)
  p.add_argument('--size', type=int, default=96)
  p.add_argument('--frames', type=int, default=24)
  p.add_argument('--object_scale', type=float, default=1.6)
  p.add_argument('--seed', type=int, default=0)
  args = p.parse_args(argv)
  rng = np.random.default_rng(args.seed)
  specs = [synthetic.sample_spec(rng, i % len(synthetic.CLASSES), args.size, args.size, args.frames, 0.0,
                                 object_scale=args.object_scale) for i in range(args.videos)]
  videos = [synthetic.render(s) for s in specs]
  print('| prep size | flow | camera-motion removal | median error | mean error | stored / true length | time |')
  print('|---|---|---|---|---|---|---|')
  for upscale, flow, camera in SETTINGS:
    r = measure(specs, videos, upscale, flow, camera)
    print(f'| {args.size * upscale} | `{flow}` | {camera} | {r["median_error"]:.3f} | {r["mean_error"]:.3f} | '
          f'{r["length_ratio"]:.2f} | {r["seconds"]:.1f} s |', flush=True)
  return 0


if __name__ == '__main__':
  sys.exit(main())
