"""Build script: the native extension ``fastload._ext`` from the C++ sources in fastload_ext/.

It links the system libjpeg-turbo (Debian/Ubuntu: ``apt-get install libjpeg62-turbo-dev``
or ``libjpeg-turbo8-dev``) and needs no torch headers: the build is quick and is not tied
to one torch ABI (a torch CppExtension build took 49 s and made 10.7 MB, bound to one torch).
"""

from glob import glob

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

setup(
    ext_modules=[
        Pybind11Extension(
            "fastload._ext",
            sorted(glob("fastload_ext/*.cpp")),
            include_dirs=["fastload_ext"],
            libraries=["jpeg"],
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
