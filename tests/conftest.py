"""Test setup shared by every test file. Runs before any test module imports JAX or TensorFlow."""
import os

# 8 simulated CPU devices for the sharding tests; the rest of the suite is unaffected.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
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

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: longer tests (minutes); CI runs them, `-m "not slow"` skips them')
