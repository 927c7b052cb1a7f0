"""Build script: the native extension ``fastload._ext`` from the C++ sources in fastload_ext/.

It links the system libjpeg-turbo (Debian/Ubuntu: ``apt-get install libjpeg62-turbo-dev``
or ``libjpeg-turbo8-dev``) and needs no torch headers: the build is quick and is not tied
to one torch ABI (a torch CppExtension build took 49 s and made 10.7 MB, bound to one torch).

The extension is optional: where it cannot be built (no C++17 compiler, no libjpeg-turbo
headers) the install goes on without it and says why once; what needs it then raises
``fastload.extension.ExtensionMissingError`` with the same advice (fastload/extension.py).
``FASTLOAD_EXTENSION=required`` makes a failed build fail the install (the Makefile's
builds, so that a development set-up or CI never runs without it).
"""

import os
import sys
from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup


class optional_build_ext(build_ext):
    """Builds ``fastload._ext`` if it can; if not, warns and leaves it out."""

    def build_extension(self, ext):
        try:
            super().build_extension(ext)
        except Exception as exc:  # compiler missing, header missing, link error: all mean "not here"
            if os.environ.get("FASTLOAD_EXTENSION") == "required":
                raise
            print(f"\nfastload: the compiled extension {ext.name} was not built ({type(exc).__name__}: {exc}). "
                  "fastload works without it, but region JPEG decoding (decoder='fastload') and the voxelizer "
                  "need it: install a C++17 compiler and the libjpeg-turbo headers (Debian/Ubuntu: apt-get "
                  "install g++ libjpeg62-turbo-dev), then reinstall fastload.\n", file=sys.stderr)


setup(
    ext_modules=[
        Pybind11Extension(
            "fastload._ext",
            sorted(glob("fastload_ext/*.cpp")),
            depends=sorted(glob("fastload_ext/*.h")),
            include_dirs=["fastload_ext"],
            libraries=["jpeg"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ],
    cmdclass={"build_ext": optional_build_ext},
)
