"""Pretraining-step speed: our jitted JAX step vs the PyTorch reference architecture on CPU, or the JAX step alone on
a GPU or TPU with its FLOPs, MFU and memory.

  python bench/train_step.py                          # CPU: ViT-S, 16 x 112², batch 4, mask 0.7 (the issue's setting)
  python bench/train_step.py --variant=B --res=224 --batch=2 --steps=3
  python bench/train_step.py --platform=gpu           # one GPU: the paper's ViT-B step, bf16, largest batch that fits
  python bench/train_step.py --platform=gpu --batch=64 --attention=cudnn --json=gpu.json

JAX: the full `train_step` (tube mask, targets, encoder on visible tokens, decoder, masked loss, AdamW update) as
`train_lib` jits it, built from `configs/pretrain_ssv2.py` (trajectory target with L = 6, joint decoder).

`--platform=cpu` (default): PyTorch is transformers' `VideoMAEForPreTraining` with the same encoder/decoder sizes,
mask ratio and batch (forward with its pixel loss, backward, AdamW step). Each side runs in its own subprocess on all
cores (so the two runtimes' thread pools never compete), alternating `--rounds` times; the best and the median round of
each are reported (on a shared VM single rounds vary by ~10%), and the JAX/PyTorch ratio (target >= 1.0).

`--platform=gpu|tpu`: JAX only, on the first device; defaults ViT-B, 16 x 224², bfloat16 compute, attention 'auto'.
Without `--batch` it finds the largest per-device batch `--min_batch` x 2^k (up to `--max_batch`) that compiles and runs
a step: it compiles `--min_batch` and its double, predicts from XLA's memory analysis of the two programs the largest
such batch within the device's memory limit, compiles and runs that one, and halves it on an out-of-memory error. The
limit is what JAX's allocator may use (`XLA_PYTHON_CLIENT_MEM_FRACTION`: by default 75 % of a GPU's memory).

Printed for the JAX step, one `name: value` line each (and written to `--json`):
  steps/s, clips/s        best of `--rounds` timed loops of `--steps` steps each, after `--warmup` steps
  flops/step              XLA's cost analysis of the compiled step (`Compiled.cost_analysis()['flops']`)
  analytic model flops    the task's matmul count (`model_flops_per_clip` x batch), and MFU on it
  model flops/step        what MFU counts: the same, except with 'cudnn' attention (XLA counts nothing inside cuDNN's
                          fused attention) or `--remat` (recomputation is not model work): then XLA's count of the
                          step lowered with 'xla' attention and no remat
  achieved TFLOP/s, MFU   model flops/step x steps/s, and that / `--peak_tflops`
  peak memory             the device's `peak_bytes_in_use` (GPU/TPU; n/a on CPU) and XLA's size of the step program
                          (arguments + outputs - donated + temporaries)
Dense bf16 peaks for `--peak_tflops` (vendor data sheets, per GPU): H100 SXM 989, H200 989 TFLOP/s. Without the flag
these are used for devices whose name says H100 80GB HBM3 (the SXM part) or H200; otherwise MFU is n/a.

Written for and tested with jax 0.10 (on CPU, including the GPU/TPU path with the hidden `--allow_cpu_backend`); it
uses no API that jax 0.10 deprecates, but jax 0.11 could not be installed where it was written.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

GIB = 2.0**30
# Dense bf16 peaks of devices recognised by their `device_kind` (a substring), TFLOP/s.
KNOWN_PEAK_TFLOPS = (('H100 80GB HBM3', 989.0), ('H100 SXM', 989.0), ('H200', 989.0))
# Defaults that differ by platform: (cpu, gpu/tpu). `batch` 0 = find the largest that fits.
PLATFORM_DEFAULTS = {'variant': ('S', 'B'), 'res': (112, 224), 'batch': (4, 0),
                     'jax_dtype': ('float32', 'bfloat16'), 'steps': (10, 20), 'rounds': (2, 3)}
VIT_SIZES = {'S': (384, 12, 6), 'B': (768, 12, 12), 'L': (1024, 24, 16), 'mu': (64, 2, 4)}  # width, depth, heads


def make_config(args, batch: int, *, attention: str | None = None, remat: bool | None = None):
  """The benchmark's pretraining config: configs/pretrain_ssv2.py with the clip, batch and model overrides."""
  from configs import pretrain_ssv2

  config = pretrain_ssv2.get_config(f'variant={args.variant},mask_ratio={args.mask_ratio}')
  with config.unlocked():
    config.data.update(num_frames=args.frames, res=args.res, batch_size=batch, train_files='unused')
    config.model.dtype = args.jax_dtype
    config.model.attention = args.attention if attention is None else attention
    config.model.remat = args.remat if remat is None else remat
    config.mesh.data = 1
    config.data.clip_ops = args.clip_ops
  return config


def random_batch(config, batch: int) -> dict[str, np.ndarray]:
  """A host batch with the input pipeline's keys, shapes and value ranges."""
  from m3video_jax import tasks
  from m3video_jax.data import clip_device

  rng = np.random.default_rng(0)
  layout = clip_device.ClipLayout.from_config(config)
  if layout.on_device:  # The host's raw clip parts; the step assembles them (data/clip_device.py).
    return clip_device.example_raw(layout, batch, rng)
  out = tasks.example_batch(config, batch)
  out['video'] = rng.integers(0, 256, size=out['video'].shape, dtype=np.uint8)
  out['traj_disp'] = rng.normal(size=out['traj_disp'].shape).astype(np.float32)
  out['traj_valid'][:] = True
  out['traj_hog'] = rng.random(out['traj_hog'].shape).astype(np.float32)
  return out


def cost_flops(cost) -> float | None:
  """`flops` of a `cost_analysis()` result: a dict, or (older JAX) a list with one dict per program."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  value = cost.get('flops') if cost else None
  return float(value) if value is not None and value > 0 else None


def program_bytes(compiled) -> int | None:
  """Device bytes of a compiled program by XLA's memory analysis: arguments + outputs - donated + temporaries."""
  try:
    m = compiled.memory_analysis()
  except (NotImplementedError, AttributeError):
    return None
  if m is None:
    return None
  return int(m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes + m.temp_size_in_bytes)


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def shapes_of(tree):
  import jax

  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


class Step:
  """The benchmark's step at one batch size on one device: compiled ahead of time, with XLA's FLOPs and bytes."""

  def __init__(self, args, batch: int, device):
    from m3video_jax import sharding, train_lib

    self.args, self.batch, self.device = args, batch, device
    self.config = make_config(args, batch)
    self.trainer = train_lib.make_trainer(self.config, sharding.make_mesh(self.config.mesh, devices=[device]))
    self.host_batch = random_batch(self.config, batch)
    start = time.perf_counter()
    # Lowered on shapes: the jit's own shardings apply, and nothing is allocated to compile.
    self.compiled = self.trainer.step_fn.lower(self.trainer.abstract_state, shapes_of(self.host_batch)).compile()
    self.compile_s = time.perf_counter() - start
    self.flops = cost_flops(self.compiled.cost_analysis())
    self.bytes = program_bytes(self.compiled)

  def run(self, state, steps: int):
    """`steps` steps from `state` (donated on accelerators); returns the state once the last step has finished."""
    import jax

    from m3video_jax import sharding

    batch = sharding.to_global(self.host_batch, self.trainer.batch_sharding)
    metrics = None
    for _ in range(steps):
      state, metrics = self.compiled(state, batch)
    jax.block_until_ready((state, metrics))
    return state

  def model_flops(self) -> tuple[float | None, str]:
    """The FLOPs MFU counts, and where they come from (module docstring)."""
    from m3video_jax import sharding, train_lib
    from m3video_jax.models import layers

    if layers.resolve_attention(self.args.attention) != 'cudnn' and not self.args.remat:
      return self.flops, 'XLA cost analysis of the compiled step'
    config = make_config(self.args, self.batch, attention='xla', remat=False)
    trainer = train_lib.make_trainer(config, sharding.make_mesh(config.mesh, devices=[self.device]))
    lowered = trainer.step_fn.lower(trainer.abstract_state, shapes_of(self.host_batch))
    return cost_flops(lowered.cost_analysis()), "XLA cost analysis of the step lowered with 'xla' attention, no remat"


def fresh_state(step: Step):
  """The benchmark's initial state on the step's device, a new one each time (the step donates it on accelerators).

  Made by the trainer's jitted init, not copied from the host: on CPU a state `device_put` from NumPy arrays ran the
  step ~8 % slower (1.64-1.72 vs 1.79-1.83 steps/s for ViT-S in one process)."""
  import jax

  return step.trainer.init(jax.random.PRNGKey(0))


def find_batch(args, device, log) -> tuple[Step, list[dict], bool]:
  """The step at the largest batch `min_batch * 2^k <= max_batch` that compiles and runs (module docstring).

  Returns:
    (that step, one record per batch size considered, whether any try ran out of memory).

  Raises:
    RuntimeError: when even `--min_batch` does not fit.
  """
  limit = (device.memory_stats() or {}).get('bytes_limit')
  fits: dict[int, Step] = {}
  tries: list[dict] = []
  out_of_memory = False

  def predicted_bytes(batch: int) -> float | None:
    if limit is None or len(fits) < 2 or any(s.bytes is None for s in fits.values()):
      return None
    (b0, s0), (b1, s1) = sorted(fits.items())[-2:]
    per_clip = (s1.bytes - s0.bytes) / (b1 - b0)
    return s1.bytes + (batch - b1) * per_clip

  def attempt(batch: int) -> bool:
    nonlocal out_of_memory
    record = {'batch': batch}
    try:
      step = Step(args, batch, device)
      record.update(compile_s=round(step.compile_s, 1), program_bytes=step.bytes)
      if limit is not None and step.bytes is not None and step.bytes > limit:
        record['result'] = 'over the memory limit by XLA\'s memory analysis, not run'
      else:
        step.run(fresh_state(step), 1)
        record['result'] = 'fits'
        fits[batch] = step
    except Exception as e:  # pylint: disable=broad-except
      if not is_out_of_memory(e):
        raise
      out_of_memory = True
      record['result'] = 'out of memory'
    tries.append(record)
    size = f', step program {record["program_bytes"] / GIB:.2f} GiB' if record.get('program_bytes') else ''
    log(f'batch {batch}: {record["result"]}{size}' + (f', compiled in {record["compile_s"]} s'
                                                         if 'compile_s' in record else ''))
    return batch in fits

  batch, failed = args.min_batch, None
  while batch <= args.max_batch:
    if not attempt(batch):
      failed = batch
      break
    nxt = batch * 2
    while nxt * 2 <= args.max_batch and (predicted_bytes(nxt * 2) or np.inf) <= 0.95 * (limit or 0):
      nxt *= 2  # Jump to the largest power-of-two multiple the two smallest programs predict to fit.
    predicted = predicted_bytes(nxt)
    if predicted is not None and predicted > limit:
      tries.append({'batch': nxt, 'result': f'not tried: predicted {predicted / GIB:.2f} GiB > limit'})
      log(f'batch {nxt}: not tried, XLA\'s memory analysis of the smaller batches predicts {predicted / GIB:.2f} GiB '
          f'> the limit {limit / GIB:.2f} GiB')
      break
    batch = nxt
  while failed is not None and failed // 2 > max(fits, default=0) and failed // 2 >= args.min_batch:
    failed //= 2  # A jump that did not fit: halve back towards the last batch that did.
    if attempt(failed):
      break
  if not fits:
    raise RuntimeError(f'--min_batch={args.min_batch} does not fit on {device.device_kind}; try a smaller one')
  return fits[max(fits)], tries, out_of_memory


def time_rounds(step: Step, state, args) -> tuple[list[float], object]:
  """Steps per second of each of `args.rounds` timed loops of `args.steps` steps, after `args.warmup` steps."""
  state = step.run(state, args.warmup)
  rates = []
  for _ in range(args.rounds):
    start = time.perf_counter()
    state = step.run(state, args.steps)
    rates.append(args.steps / (time.perf_counter() - start))
  return rates, state


def peak_tflops(args, device_kind: str) -> tuple[float | None, str]:
  if args.peak_tflops > 0:
    return args.peak_tflops, '--peak_tflops'
  for name, tflops in KNOWN_PEAK_TFLOPS:
    if name in device_kind:
      return tflops, f'dense bf16 peak of {name}'
  return None, ''


def figures(args, step: Step, rates: list[float], device) -> dict:
  """Everything the JAX side reports (printed by `print_figures`, written to `--json`)."""
  import jax

  from m3video_jax.models import layers

  best = max(rates)
  flops, flops_source = step.model_flops()
  stats = device.memory_stats() or {}
  peak, peak_source = peak_tflops(args, device.device_kind)
  achieved = flops * best / 1e12 if flops else None
  analytic = step.trainer.task.model_flops_per_clip() * step.batch  # Matmuls only (tasks.PretrainTask).
  return {
      'platform': args.platform, 'device': device.device_kind, 'backend': jax.default_backend(),
      'jax_version': jax.__version__, 'variant': args.variant, 'frames': args.frames, 'res': args.res,
      'mask_ratio': args.mask_ratio, 'dtype': args.jax_dtype, 'attention': args.attention,
      'attention_resolved': layers.resolve_attention(args.attention, jax.default_backend()), 'remat': args.remat,
      'batch': step.batch, 'steps': args.steps, 'warmup': args.warmup, 'rounds': len(rates),
      'steps_per_sec': best, 'steps_per_sec_median': float(np.median(rates)), 'steps_per_sec_rounds': rates,
      'clips_per_sec': best * step.batch, 'flops_per_step': step.flops, 'model_flops_per_step': flops,
      'model_flops_source': flops_source, 'achieved_tflops': achieved, 'peak_tflops': peak,
      'peak_tflops_source': peak_source, 'mfu': achieved / peak if achieved and peak else None,
      'analytic_model_flops_per_step': analytic,
      'mfu_analytic': analytic * best / 1e12 / peak if peak else None,
      'peak_bytes_in_use': stats.get('peak_bytes_in_use'), 'bytes_limit': stats.get('bytes_limit'),
      'program_bytes': step.bytes, 'compile_s': step.compile_s,
  }


def print_figures(f: dict) -> None:
  """The `name: value` lines of the module docstring."""
  attention = f['attention'] + (f' ({f["attention_resolved"]})' if f['attention'] == 'auto' else '')
  print(f'device: {f["device"]} ({f["backend"]}), jax {f["jax_version"]}')
  print(f'setting: ViT-{f["variant"]}, {f["frames"]} x {f["res"]}², mask {f["mask_ratio"]}, batch {f["batch"]} per '
        f'device, {f["dtype"]}, attention {attention}, remat {"on" if f["remat"] else "off"}')
  print(f'steps/s: {f["steps_per_sec"]:.4f} (best of {f["rounds"]} rounds of {f["steps"]} steps after {f["warmup"]} '
        f'warm-up; median {f["steps_per_sec_median"]:.4f})')
  print(f'clips/s: {f["clips_per_sec"]:.2f}')
  print(f'flops/step: {f["flops_per_step"]:.4g}' if f['flops_per_step'] else 'flops/step: n/a')
  print(f'model flops/step: {f["model_flops_per_step"]:.4g} ({f["model_flops_source"]})' if f['model_flops_per_step']
        else 'model flops/step: n/a')
  print(f'analytic model flops/step: {f["analytic_model_flops_per_step"]:.4g} (matmuls only, the task\'s '
        f'model_flops_per_clip x batch)' + (f'; MFU on it {100 * f["mfu_analytic"]:.2f} %' if f['mfu_analytic'] else ''))
  print(f'achieved TFLOP/s: {f["achieved_tflops"]:.4g}' if f['achieved_tflops'] else 'achieved TFLOP/s: n/a')
  print(f'MFU: {100 * f["mfu"]:.2f} % of {f["peak_tflops"]:g} TFLOP/s ({f["peak_tflops_source"]})' if f['mfu']
        else 'MFU: n/a (pass --peak_tflops)')
  program = f'; step program {f["program_bytes"] / GIB:.2f} GiB (XLA memory analysis)' if f['program_bytes'] else ''
  if f['peak_bytes_in_use']:
    limit = f' of {f["bytes_limit"] / GIB:.2f} GiB usable' if f['bytes_limit'] else ''
    print(f'peak memory: {f["peak_bytes_in_use"] / GIB:.2f} GiB{limit} (device peak_bytes_in_use){program}')
  else:
    print(f'peak memory: n/a (the device reports no memory stats){program}')


def write_json(path: str, data: dict) -> None:
  if path:
    with open(path, 'w') as fp:
      json.dump(data, fp, indent=2, sort_keys=True)
    print(f'figures written to {path}')


def bench_device(args) -> None:
  """`--platform=gpu|tpu`: the JAX step on the first device, batch search, figures."""
  import jax

  backend = jax.default_backend()
  if backend != args.platform and not (args.allow_cpu_backend and backend == 'cpu'):
    sys.exit(f'error: --platform={args.platform} but JAX runs on {backend!r} ({jax.devices()[0].device_kind}); '
             f'install the JAX build for the accelerator and leave JAX_PLATFORMS unset (or set it to '
             f'{"cuda" if args.platform == "gpu" else "tpu"})')
  device = jax.devices()[0]
  env = {k: os.environ[k] for k in ('XLA_PYTHON_CLIENT_MEM_FRACTION', 'XLA_PYTHON_CLIENT_PREALLOCATE', 'XLA_FLAGS')
         if k in os.environ}
  print(f'device: {device.device_kind} ({backend}), {jax.device_count()} devices, jax {jax.__version__}, '
        f'environment {env or "default"}', flush=True)
  log = lambda line: print(line, flush=True)
  if args.batch:
    step, tries, out_of_memory = Step(args, args.batch, device), [], False
    log(f'batch {args.batch} (--batch): compiled in {step.compile_s:.1f} s')
  else:
    step, tries, out_of_memory = find_batch(args, device, log)
    log(f'largest batch that fits: {step.batch}')
  rates, _ = time_rounds(step, fresh_state(step), args)
  out = figures(args, step, rates, device)
  out.update(batch_search=tries, peak_includes_an_out_of_memory_try=out_of_memory)
  print_figures(out)
  if out_of_memory:
    print('note: a larger batch ran out of memory first, so the peak memory may be that try\'s')
  write_json(args.json, out)


def bench_jax_cpu(args) -> dict:
  """One CPU round of the JAX side (child process): its figures, the rounds filled in by the parent."""
  import jax

  device = jax.devices()[0]
  step = Step(args, args.batch, device)
  args = argparse.Namespace(**{**vars(args), 'rounds': 1})  # The parent runs the rounds, one child each.
  rates, _ = time_rounds(step, fresh_state(step), args)
  return figures(args, step, rates, device)


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


def bench_cpu(args, argv: list[str]) -> None:
  """`--platform=cpu`: JAX and PyTorch rounds in alternating subprocesses."""
  sides = ['jax'] + ([] if args.skip_torch else ['torch'])
  runs = {s: [] for s in sides}
  jax_rounds = []
  for r in range(args.rounds):
    for side in sides:
      out = subprocess.run([sys.executable, os.path.abspath(__file__), f'--side={side}'] + argv,
                           check=True, capture_output=True, text=True).stdout
      result = json.loads(out.split('RESULT ')[-1].splitlines()[0])
      sps = result['steps_per_sec']
      if side == 'jax':
        jax_rounds.append(result)
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
  # The JAX figures of the best round, with every round's rate.
  f = max(jax_rounds, key=lambda x: x['steps_per_sec'])
  rates = [x['steps_per_sec'] for x in jax_rounds]
  f.update(rounds=len(rates), steps_per_sec_rounds=rates, steps_per_sec_median=float(np.median(rates)))
  if 'torch' in best:
    f['torch_steps_per_sec'], f['torch_steps_per_sec_median'] = best['torch'], median['torch']
  print('jax step:')
  print_figures(f)
  write_json(args.json, f)


def parse_args(argv: list[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--platform', default='cpu', choices=['cpu', 'gpu', 'tpu'],
                      help='cpu: JAX vs PyTorch on CPU; gpu/tpu: the JAX step alone on the first accelerator')
  parser.add_argument('--variant', choices=sorted(VIT_SIZES), help='default S (cpu) / B (gpu, tpu)')
  parser.add_argument('--frames', type=int, default=16)
  parser.add_argument('--res', type=int, help='default 112 (cpu) / 224 (gpu, tpu)')
  parser.add_argument('--batch', type=int, help='per device; default 4 (cpu) / the largest that fits (gpu, tpu)')
  parser.add_argument('--min_batch', type=int, default=8, help='gpu/tpu batch search: the first batch tried')
  parser.add_argument('--max_batch', type=int, default=1024, help='gpu/tpu batch search: the largest batch tried')
  parser.add_argument('--mask_ratio', type=float, default=0.7)
  parser.add_argument('--steps', type=int, help='timed steps per round; default 10 (cpu) / 20 (gpu, tpu)')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--rounds', type=int, help='default 2 (cpu) / 3 (gpu, tpu)')
  parser.add_argument('--jax_dtype', choices=['float32', 'bfloat16'], help='default float32 (cpu) / bfloat16')
  parser.add_argument('--attention', default='auto', choices=['auto', 'explicit', 'xla', 'cudnn'],
                      help='config.model.attention')
  parser.add_argument('--remat', action='store_true', help='config.model.remat')
  parser.add_argument('--clip_ops', default='auto', choices=['auto', 'device', 'host'],
                      help="config.data.clip_ops: 'device' = the step also resizes the frames and resamples the "
                           "trajectories and HOG from the host's raw clip parts; 'host' = the step gets finished clips; "
                           "'auto' = device on GPU/TPU, host on CPU")
  parser.add_argument('--peak_tflops', type=float, default=0.0,
                      help='peak TFLOP/s of the device for MFU (dense bf16: H100 SXM 989, H200 989)')
  parser.add_argument('--json', default='', help='write the JAX figures to this file')
  parser.add_argument('--skip_torch', action='store_true', help='cpu: JAX only')
  parser.add_argument('--side', default='', choices=['', 'jax', 'torch'], help=argparse.SUPPRESS)
  # Tests: run the gpu/tpu path on the CPU backend.
  parser.add_argument('--allow_cpu_backend', action='store_true', help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  accelerator = int(args.platform != 'cpu')
  for name, values in PLATFORM_DEFAULTS.items():
    if getattr(args, name) is None:
      setattr(args, name, values[accelerator])
  if args.platform == 'cpu' and args.batch <= 0:
    parser.error('--platform=cpu needs --batch > 0 (the batch search is for gpu/tpu)')
  if args.min_batch <= 0 or args.max_batch < args.min_batch:
    parser.error('--min_batch must be > 0 and <= --max_batch')
  return args


def main() -> None:
  argv = sys.argv[1:]
  args = parse_args(argv)
  if args.side == 'jax':  # Child process of the CPU comparison: measure one side and print the figures.
    print('RESULT ' + json.dumps(bench_jax_cpu(args)), flush=True)
  elif args.side == 'torch':
    print('RESULT ' + json.dumps({'steps_per_sec': bench_torch(args)}), flush=True)
  elif args.platform == 'cpu':
    bench_cpu(args, argv)
  else:
    bench_device(args)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  main()
