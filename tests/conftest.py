"""Test setup shared by every test file. Runs before any test module imports JAX or TensorFlow."""
import os

# 8 simulated CPU devices for the sharding tests; the rest of the suite is unaffected.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line('markers', 'slow: longer tests (minutes); CI runs them, `-m "not slow"` skips them')
