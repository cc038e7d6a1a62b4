"""Build of the compiled Cython/OpenMP backend. Everything else lives in pyproject.toml."""
from setuptools import setup

setup()
