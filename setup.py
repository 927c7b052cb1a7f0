"""Build script. The C++ extension sources live in fastload_ext/ (see its README)."""

from setuptools import setup

setup()
