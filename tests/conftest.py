"""Test setup shared by every test file. Runs before any test module imports JAX or TensorFlow."""
import os

# 8 simulated CPU devices for the sharding tests; the rest of the suite is unaffected. XLA:CPU's older loop emitters
# instead of its fusion emitters and one LLVM module per program compile the tests' many small programs faster (four
# compile-heavy test files 68-75 s -> 39-40 s; a step of the demo model runs ~15 % slower: BENCHMARKS.md, "Test suite
# wall time").
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8 --xla_cpu_use_fusion_emitters=false '
                      '--xla_cpu_parallel_codegen_split_count=1')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')
# One persistent XLA compilation cache for the session (and the CLIs it starts, through the environment): the many
# short trainings compile the same steps again and again. A fresh directory each session, removed at the end.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  import atexit
  import shutil
  import tempfile

  _CACHE = tempfile.mkdtemp(prefix='m3video_jax_test_xla_cache_')
  os.environ['JAX_COMPILATION_CACHE_DIR'] = _CACHE
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
# Most tests compile a program and run it a few steps, so compiling is most of their time: XLA's optimisations are
# off (15 compile-heavy tests take 26 % less time; a step of the demo model runs ~2.5x slower: BENCHMARKS.md, "Test
# suite wall time"). The tests that train for thousands of steps turn them back on with the `optimized_xla` fixture.
os.environ.setdefault('JAX_DISABLE_MOST_OPTIMIZATIONS', '1')

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: tests of ~10 s or more on 2 cores (end-to-end runs, CLIs with a pool of '
                          'workers, clusters and groups of processes, most libtpu compiles, the learning runs); CI '
                          'runs them, `-m "not slow"` skips them')


def pytest_collection_modifyitems(items):
  """Slow tests first: with pytest.ini's `-n auto` each starts on a free worker while the short ones fill the other,
  instead of one of them ending the run alone."""
  items.sort(key=lambda item: item.get_closest_marker('slow') is None)


@pytest.fixture
def optimized_xla():
  """XLA's optimisations on for this test (see above): for tests that train thousands of steps."""
  import jax

  before = jax.config.values['jax_disable_most_optimizations']
  jax.config.update('jax_disable_most_optimizations', False)
  yield
  jax.config.update('jax_disable_most_optimizations', before)


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
  """A `data.prepare_dir` shared by the learning runs of the demo config (tests/demo_test.py and
  tests/learn_alarm_test.py, one xdist group): the first run prepares the videos, the others read them."""
  return str(tmp_path_factory.mktemp('demo_data'))
