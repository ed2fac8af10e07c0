r"""Compiles a config's real training step for a TPU slice on this host, without a TPU: memory, batch, FLOPs, host feed.

  python bench/tpu_compile.py --config=configs/pretrain_ssv2.py --topology=v5e:2x4
  python bench/tpu_compile.py --config=configs/finetune_ssv2.py --topology=v5p:2x2x2 --per_chip_batch=16
  python bench/tpu_compile.py --config=configs/pretrain_ssv2.py:variant=L --topology=v5p:4x4x8 \
      --config.mesh.fsdp=4 --config.model.remat=True --json=vitl_v5p128.json

libtpu's ahead-of-time compiler (`pip install -e '.[tpu]'`) compiles for a described TPU topology
(`jax.experimental.topologies`) on a host that has none, as MaxText's `train_compile.py` does: the step is the one
`m3video_jax.train_lib.make_trainer` jits for a run (pretraining, fine-tuning or linear probing, by `config.task`), on
the config's ('data', 'fsdp') mesh over the slice's devices, lowered on abstract inputs, so nothing is allocated. The
compute dtype is bfloat16 unless `--config.model.dtype` says otherwise. Every figure is a compile-time figure (XLA's
memory and cost analysis of the program), not a measurement of a run.

`--topology` is `<generation>:<shape>`: v4:2x2x1, v4:2x2x2, v5e:2x2, v5e:2x4, v5e:16x16, v5p:2x2x1, v5p:4x4x8,
v6e:2x4, v6e:16x16, ... (chips = the product of the shape; one JAX device per chip, v4 and v5p in megacore mode as on
their hosts). Multi-host slices (e.g. v5e:16x16, 64 hosts of 4 chips) compile the same way.

Without `--per_chip_batch` it finds the largest per-chip batch `--base_batch` x 2^k that fits: it compiles the base and
its double, predicts from XLA's memory analysis of the two the largest such batch within the chip's HBM, and compiles
that one to confirm (halving on a compile that runs out of memory: the TPU compiler refuses a program over the HBM).

Printed (and written to `--json`), per chip unless said otherwise:
  hbm needed / capacity     XLA's size of the step program at that batch (arguments + outputs - donated + temporaries)
                            and the chip's HBM (vendor data sheets, `CHIPS`)
  largest batch that fits   per chip, and each batch compiled on the way (bytes, compile seconds)
  xla flops                 `Compiled.cost_analysis()['flops']` per step and per clip (remat recomputation included)
  model flops               the analytic count per clip (the task's `model_flops_per_clip`): what MFU counts
  clip assembly flops       pretraining with `data.clip_ops='device'`: the analytic FLOPs of finishing the clips in the
                            step (`clip_device.ClipLayout.assembly_flops`), and their share of XLA's count
  global batch              how the config's `data.batch_size` is reached: per-chip batch x chips x grad_accum_steps,
                            and the `--config` overrides that launch it
  host feed                 clips/s one chip would consume at `--mfu` of its bf16 peak, and the host cores that needs at
                            `--host_clips_per_core` (bench/input_pipeline.py's figure), against `--host_share` of the
                            vCPUs per chip of the slice's TPU VMs
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import sys
import time

os.environ.setdefault('JAX_PLATFORMS', 'cpu')  # The ahead-of-time TPU compiler needs no TPU backend; runs stay on CPU.
# libtpu lets one process at a time load it (a lock file in /tmp) unless told otherwise; compiling needs no TPU, so
# several compiles (and a run on the host's own TPU) may go on side by side.
os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import ml_collections  # pylint: disable=g-import-not-at-top
from absl import app
from absl import flags
from ml_collections import config_flags

GIB = 2.0**30
# Per chip, from the vendor's data sheets (Cloud TPU system architecture pages: v4, v5e, v5p, v6e; 2026): HBM, dense
# bf16 peak TFLOP/s, vCPUs per TPU VM and chips per VM of the multi-chip VM types used for slices (v4: 240 vCPUs, 4
# chips; v5e ct5lp-hightpu-8t: 224 vCPUs, 8 chips (4t: 112, 4); v5p: 208 vCPUs, 4 chips; v6e ct6e-standard-8t: 180
# vCPUs, 8 chips). HBM is as the sheets give it (GiB for v4; "GB" for the others, where XLA's own limit decides).
CHIPS = {
    'TPU v4': dict(generation='v4', hbm_gib=32.0, peak_tflops=275.0, host_vcpus=240, chips_per_host=4),
    'TPU v5 lite': dict(generation='v5e', hbm_gib=16.0, peak_tflops=197.0, host_vcpus=224, chips_per_host=8),
    'TPU v5': dict(generation='v5p', hbm_gib=95.0, peak_tflops=459.0, host_vcpus=208, chips_per_host=4),
    'TPU v6 lite': dict(generation='v6e', hbm_gib=32.0, peak_tflops=918.0, host_vcpus=180, chips_per_host=8),
}
# bench/input_pipeline.py, recommended setting with the clips finished on the device: 94-99 (BENCHMARKS.md, 2026-12-07).
DEFAULT_HOST_CLIPS_PER_CORE = 94.0



@dataclasses.dataclass(frozen=True)
class Options:
  """The script's settings besides the config and topology (its flags of the same names)."""
  per_chip_batch: int = 0  # Compile this per-chip batch only (0 = find the largest).
  base_batch: int = 8  # Batch search: the first per-device batch tried.
  max_batch: int = 512  # Batch search: the largest per-device batch tried.
  mfu: float = 0.4  # Assumed model-FLOPs utilisation for the host-feed estimate.
  host_clips_per_core: float = DEFAULT_HOST_CLIPS_PER_CORE  # Input-pipeline clips/s per host core.
  host_share: float = 0.75  # Share of the TPU VM's vCPUs the input pipeline may take (the rest: the training loop,
  # checkpointing, the OS).


def define_flags() -> None:
  """The command line (only when run as a script: tests call `run` and define no global flags)."""
  config_flags.DEFINE_config_file('config', None, 'Config file, optionally with `:args`.', lock_config=False)
  flags.DEFINE_string('topology', 'v5e:2x4', 'TPU slice, <generation>:<shape>, e.g. v5e:2x4, v5p:4x4x8.')
  defaults = Options()
  flags.DEFINE_integer('per_chip_batch', defaults.per_chip_batch, 'Compile this per-chip batch only (0 = search).')
  flags.DEFINE_integer('base_batch', defaults.base_batch, 'Batch search: the first per-device batch tried.')
  flags.DEFINE_integer('max_batch', defaults.max_batch, 'Batch search: the largest per-device batch tried.')
  flags.DEFINE_float('mfu', defaults.mfu, 'Assumed model-FLOPs utilisation for the host-feed estimate.')
  flags.DEFINE_float('host_clips_per_core', defaults.host_clips_per_core,
                     'Input-pipeline clips/s per host core (bench/input_pipeline.py).')
  flags.DEFINE_float('host_share', defaults.host_share, "Share of the TPU VM's vCPUs the input pipeline may take.")
  flags.DEFINE_string('json', '', 'Write the figures to this file.')
  flags.mark_flags_as_required(['config'])


def model_flops_per_clip(config) -> float:
  """The analytic training FLOPs of one clip (`model_flops_per_clip` of the config's task in `m3video_jax.tasks`):
  matmuls only, forward + backward where gradients flow; pretraining counts the encoder on the visible tokens and the
  decoder on all of them."""
  from m3video_jax import tasks

  return tasks.get_task(config).model_flops_per_clip()


def assembly_flops_per_clip(config) -> float:
  """The analytic FLOPs of finishing one pretraining clip inside the step (`data.clip_ops='device'`:
  `clip_device.ClipLayout.assembly_flops`); 0 for other tasks or host-finished clips."""
  from m3video_jax import tasks
  from m3video_jax.data import clip_device

  if not isinstance(tasks.get_task(config), tasks.PretrainTask):
    return 0.0
  return clip_device.ClipLayout.from_config(config).assembly_flops()


# ---------------------------------------------------------------------------------------------------------------------
# The slice and the compiled step.

def slice_devices(topology: str):
  """The devices of a TPU slice described by `topology` (no TPU needed), and the chip's data-sheet entry."""
  from jax.experimental import topologies

  # v4 and v5p chips have two TensorCores, which JAX drives as one device ("megacore", as on a real v4/v5p host).
  megacore = topology.split(':')[0] in ('v4', 'v5p')
  try:
    devices = topologies.get_topology_desc(topology_name=topology, platform='tpu',
                                           chip_config_name='megacore' if megacore else 'default').devices
  except Exception as e:  # pylint: disable=broad-except
    raise app.UsageError(f'libtpu cannot describe --topology={topology!r} (expected e.g. v5e:2x4 or v5p:2x2x2; is '
                         f"libtpu installed? pip install -e '.[tpu]'): {type(e).__name__}: "
                         f'{str(e).splitlines()[0] if str(e) else ""}') from None
  kind = devices[0].device_kind
  if kind not in CHIPS:
    raise app.UsageError(f'--topology={topology!r} gives {kind!r} devices; known chips: {sorted(CHIPS)}')
  if len({tuple(d.coords) for d in devices}) != len(devices):  # Every figure below is per device = per chip.
    raise app.UsageError(f'--topology={topology!r} gives several devices per chip; expected one (megacore)')
  return list(devices), CHIPS[kind]


def step_config(base, batch: int, accum: int = 1):
  """`base` at global batch `batch` x `accum` (clips per step), grad accumulation `accum`, bfloat16 unless set."""
  config = ml_collections.ConfigDict(base.to_dict())
  config.data.batch_size = batch * accum
  config.optim.grad_accum_steps = accum
  if not config.data.get('train_files'):
    config.data.train_files = 'unused'
  return config


def abstract_batch(config, batch: int):
  """ShapeDtypeStructs of a training batch of `batch` clips of the config's task (nothing allocated)."""
  import jax

  from m3video_jax import tasks

  one = tasks.example_batch(config, 1)
  return {k: jax.ShapeDtypeStruct((batch,) + v.shape[1:], v.dtype) for k, v in one.items()}


def _bench_train_step():
  """bench/train_step.py as a module (its XLA cost and memory readers)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'train_step.py')
  spec = importlib.util.spec_from_file_location('bench_train_step', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def is_out_of_memory(error: Exception) -> bool:
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'out of memory' in text.lower()


def compile_step(config, devices, per_device: int, hbm_bytes: float, accum: int = 1) -> dict:
  """Compiles `config`'s train step on `devices` at `per_device` clips per device (per micro-batch with `accum`).

  Returns a record: per_device, fits (compiled, and within `hbm_bytes` by XLA's memory analysis), compile_s,
  program_bytes, flops (XLA, per device per step), and the compiler's out-of-memory line when it refused the
  program."""
  import jax

  from m3video_jax import sharding, tasks, train_lib

  bench_step = _bench_train_step()
  config = step_config(config, per_device * len(devices), accum)
  if 'eval' in config:  # Evaluation is not compiled here; its batch only has to pass validation.
    config.eval.batch_size = len(devices) * 8
  tasks.validate(config, num_devices=len(devices))
  jax.config.update('jax_threefry_partitionable', True)  # As train_and_evaluate sets it.
  record = {'per_device_batch': per_device, 'grad_accum_steps': accum}
  trainer = train_lib.make_trainer(config, mesh=sharding.make_mesh(config.mesh, devices))
  start = time.perf_counter()
  try:
    lowered = trainer.step_fn.lower(trainer.abstract_state, abstract_batch(config, config.data.batch_size))
    compiled = lowered.compile()
  except Exception as e:  # pylint: disable=broad-except
    if not is_out_of_memory(e):
      raise
    used = re.search(r'Used ([\d.]+[KMGT]?) of ([\d.]+[KMGT]?) hbm', str(e))
    record.update(fits=False, compile_s=round(time.perf_counter() - start, 1),
                  compiler=used.group(0) if used else str(e).splitlines()[0][:200])
    return record
  size = bench_step.program_bytes(compiled)
  # Over the data sheet's HBM: the compiler's own limit is what refuses it on a real chip.
  record.update(fits=size is None or size <= hbm_bytes, compile_s=round(time.perf_counter() - start, 1),
                program_bytes=size, flops=bench_step.cost_flops(compiled.cost_analysis()))
  return record


def find_batch(config, devices, hbm_bytes: float, opts: Options, log) -> tuple[dict, list[dict]]:
  """The record of the largest per-device batch `--base_batch` x 2^k (<= `--max_batch`) that compiles within the HBM,
  from two compiles and a prediction confirmed by a third (module docstring), and every record on the way."""
  tried: dict[int, dict] = {}

  def attempt(b: int) -> bool:
    if b not in tried:
      r = compile_step(config, devices, b, hbm_bytes)
      tried[b] = r
      size = f'{r["program_bytes"] / GIB:.2f} GiB' if r.get('program_bytes') else r.get('compiler', '')
      log(f'  per-device batch {b}: {"fits" if r["fits"] else "does not fit"} ({size}), compiled in '
          f'{r["compile_s"]} s')
    return tried[b]['fits']

  b = opts.base_batch
  while not attempt(b):
    if b == 1:
      raise app.UsageError(f'not even one clip per device fits {hbm_bytes / GIB:.1f} GiB: try '
                           '--config.model.remat=True or a larger --config.mesh.fsdp')
    b //= 2
  if b < opts.base_batch or 2 * b > opts.max_batch or not attempt(2 * b):
    return tried[b], list(tried.values())
  b0, b1 = b, 2 * b
  slope = (tried[b1]['program_bytes'] - tried[b0]['program_bytes']) / (b1 - b0)
  predict = lambda x: tried[b1]['program_bytes'] + (x - b1) * slope
  target = b1
  while 2 * target <= opts.max_batch and predict(2 * target) <= hbm_bytes:
    target *= 2
  if target == b1 and 2 * b1 <= opts.max_batch:
    log(f'  predicted from {b0} and {b1}: {2 * b1} needs {predict(2 * b1) / GIB:.2f} GiB > the HBM, not compiled')
  if target > b1:
    log(f'  predicted from {b0} and {b1}: {target} fits ({predict(target) / GIB:.2f} GiB), {2 * target} not '
        f'({predict(2 * target) / GIB:.2f} GiB)')
    while target > b1 and not attempt(target):
      target //= 2
  best = max(x for x, r in tried.items() if r['fits'])
  return tried[best], list(tried.values())


def global_batch_plan(global_batch: int, per_device_max: int, devices: int) -> tuple[int, int] | None:
  """(per-device micro-batch, grad_accum_steps) reaching `global_batch` clips per step with the fewest micro-batches;
  None when `global_batch` is not a multiple of `devices`."""
  if global_batch % devices:
    return None
  per_device_total = global_batch // devices
  for accum in range(1, per_device_total + 1):
    if per_device_total % accum == 0 and per_device_total // accum <= per_device_max:
      return per_device_total // accum, accum
  return None


def figures(config, topology: str, devices, chip: dict, best: dict, tried: list[dict], opts: Options) -> dict:
  import jax

  chips = len(devices)  # One device per chip (`slice_devices`).
  hbm_chip = chip['hbm_gib'] * GIB
  model_flops = model_flops_per_clip(config)
  assembly = assembly_flops_per_clip(config)
  xla_per_clip = best['flops'] / best['per_device_batch'] if best.get('flops') else None
  consumed = opts.mfu * chip['peak_tflops'] * 1e12 / model_flops
  cores = consumed / opts.host_clips_per_core
  vcpus_per_chip = chip['host_vcpus'] / chip['chips_per_host']
  plan = global_batch_plan(config.data.batch_size, best['per_device_batch'], len(devices))
  overrides = [f'--config.mesh.fsdp={config.mesh.fsdp}'] if config.mesh.fsdp > 1 else []
  overrides += ['--config.model.remat=True'] if config.model.get('remat') else []
  overrides += [f'--config.model.dtype={config.model.dtype}']
  if plan and plan[1] > 1:
    overrides.append(f'--config.optim.grad_accum_steps={plan[1]}')
  mesh_data = len(devices) // config.mesh.fsdp if config.mesh.data == -1 else config.mesh.data
  return {
      'topology': topology, 'chips': chips, 'devices': len(devices),
      'hosts': len({d.process_index for d in devices}), 'device_kind': devices[0].device_kind,
      'generation': chip['generation'], 'jax_version': jax.__version__, 'libtpu_version': _libtpu_version(),
      'task': config.task, 'encoder': config.model.encoder, 'frames': config.data.num_frames, 'res': config.data.res,
      'dtype': config.model.dtype, 'remat': bool(config.model.get('remat')),
      'mesh': {'data': mesh_data, 'fsdp': config.mesh.fsdp},
      'per_chip_batch': best['per_device_batch'], 'per_device_batch': best['per_device_batch'],
      'hbm_bytes_per_chip': best.get('program_bytes'), 'hbm_capacity_bytes': hbm_chip, 'fits': best['fits'],
      'xla_flops_per_step_per_chip': best.get('flops'),
      'xla_flops_per_clip': xla_per_clip, 'model_flops_per_clip': model_flops,
      'clip_assembly_flops_per_clip': assembly,
      'clip_assembly_share_of_xla_flops': assembly / xla_per_clip if xla_per_clip else None,
      # XLA's count against the analytic one of everything the step multiplies: the model and the clip assembly.
      'xla_over_model_flops': xla_per_clip / (model_flops + assembly) if xla_per_clip else None,
      'compile_s': best['compile_s'], 'compiles': tried,
      'global_batch': config.data.batch_size,
      'global_batch_plan': ({'per_chip_batch': plan[0], 'chips': chips, 'grad_accum_steps': plan[1]}
                            if plan else None),
      'launch_overrides': overrides,
      'peak_tflops_per_chip': chip['peak_tflops'], 'assumed_mfu': opts.mfu,
      'clips_per_s_per_chip_at_mfu': consumed, 'host_clips_per_core': opts.host_clips_per_core,
      'host_cores_needed_per_chip': cores, 'host_vcpus_per_chip': vcpus_per_chip,
      'host_share': opts.host_share, 'host_can_feed': cores <= opts.host_share * vcpus_per_chip,
      'note': 'compile-time figures (XLA memory and cost analysis for the described slice), not measured runs',
  }


def _libtpu_version() -> str | None:
  try:
    from importlib import metadata
    return metadata.version('libtpu')
  except Exception:  # pylint: disable=broad-except
    return None


def print_figures(f: dict) -> None:
  gib = lambda x: f'{x / GIB:.2f} GiB' if x else 'n/a'
  print(f'slice: {f["topology"]} = {f["chips"]} chips ({f["device_kind"]}, {f["devices"]} devices, {f["hosts"]} '
        f'hosts), mesh data {f["mesh"]["data"]} x fsdp {f["mesh"]["fsdp"]}; jax {f["jax_version"]}, libtpu '
        f'{f["libtpu_version"]}')
  print(f'step: {f["task"]}, ViT-{f["encoder"]}, {f["frames"]} x {f["res"]}², {f["dtype"]}, remat '
        f'{"on" if f["remat"] else "off"}')
  if len(f['compiles']) > 1 or not f['fits']:  # Found by the search (or the one asked for did not fit).
    print(f'largest per-chip batch that fits: {f["per_chip_batch"]}' if f['fits'] else
          f'per-chip batch {f["per_chip_batch"]}: does NOT fit')
  else:
    print(f'per-chip batch {f["per_chip_batch"]}: fits')
  print(f'hbm per chip: {gib(f["hbm_bytes_per_chip"])} needed of {gib(f["hbm_capacity_bytes"])} (data sheet)')
  if f['xla_flops_per_clip']:
    print(f'xla flops: {f["xla_flops_per_step_per_chip"]:.3e} per chip per step, {f["xla_flops_per_clip"]:.3e} per clip'
          f' ({f["xla_over_model_flops"]:.2f} x the analytic count of model + clip assembly)')
  print(f'model flops per clip (analytic): {f["model_flops_per_clip"]:.3e}')
  if f['clip_assembly_flops_per_clip']:
    print(f'clip assembly on the device (data.clip_ops=device, analytic): {f["clip_assembly_flops_per_clip"]:.3e} '
          f'flops per clip' + (f' = {100 * f["clip_assembly_share_of_xla_flops"]:.2f} % of the step\'s XLA flops'
                               if f['clip_assembly_share_of_xla_flops'] else ''))
  plan = f['global_batch_plan']
  print(f'global batch {f["global_batch"]}: ' + (
      f'{plan["per_chip_batch"]} per chip x {plan["chips"]} chips x {plan["grad_accum_steps"]} grad_accum_steps'
      if plan else f'not reachable on {f["devices"]} devices (not a multiple)'))
  print(f'launch overrides: {" ".join(f["launch_overrides"])}')
  print(f'host feed: at {100 * f["assumed_mfu"]:.0f} % MFU of {f["peak_tflops_per_chip"]:g} TFLOP/s a chip consumes '
        f'{f["clips_per_s_per_chip_at_mfu"]:.0f} clips/s = {f["host_cores_needed_per_chip"]:.1f} host cores at '
        f'{f["host_clips_per_core"]:g} clips/s per core; the TPU VM has {f["host_vcpus_per_chip"]:g} vCPUs per chip, '
        f'{f["host_share"] * f["host_vcpus_per_chip"]:.1f} of them ({100 * f["host_share"]:.0f} %) for input: '
        f'{"enough" if f["host_can_feed"] else "NOT enough, the input pipeline cannot feed this chip"}')
  print(f'compile: {f["compile_s"]} s for the reported batch, {len(f["compiles"])} compiles in all '
        f'({sum(r["compile_s"] for r in f["compiles"]):.0f} s); {f["note"]}')


def run(config, topology: str, opts: Options = Options(), log=print, *, bfloat16: bool = True) -> dict:
  """Everything `main` prints, as a dict (tests call this). `bfloat16`: compile in bfloat16 (else the config's dtype)."""
  devices, chip = slice_devices(topology)
  config = ml_collections.ConfigDict(config.to_dict())
  if config.data.get('clip_ops') == 'auto':  # On the TPU the step finishes the clips (this host is only the compiler).
    config.data.clip_ops = 'device'
  if bfloat16:
    config.model.dtype = 'bfloat16'
  hbm = chip['hbm_gib'] * GIB
  log(f'compiling {config.task} for {topology} ({len(devices)} {devices[0].device_kind} devices)')
  if opts.per_chip_batch:
    best = compile_step(config, devices, opts.per_chip_batch, hbm)
    tried = [best]
  else:
    best, tried = find_batch(config, devices, hbm, opts, log)
  return figures(config, topology, devices, chip, best, tried, opts)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments {argv[1:]}')
  from m3video_jax import cli
  cli.quiet_libraries(False)
  fv = flags.FLAGS
  opts = Options(per_chip_batch=fv.per_chip_batch, base_batch=fv.base_batch, max_batch=fv.max_batch, mfu=fv.mfu,
                 host_clips_per_core=fv.host_clips_per_core, host_share=fv.host_share)
  dtype_given = any(a.startswith('--config.model.dtype') for a in argv[1:] + sys.argv[1:])
  f = run(fv.config, fv.topology, opts, log=lambda line: print(line, flush=True), bfloat16=not dtype_given)
  print_figures(f)
  if fv.json:
    with open(fv.json, 'w') as fp:
      json.dump(f, fp, indent=2, sort_keys=True)
    print(f'figures written to {fv.json}')


if __name__ == '__main__':
  define_flags()
  app.run(main)
