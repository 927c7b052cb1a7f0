"""fastload installs with pip alone: the sdist builds, the wheel holds fastload and nothing
else, and both work from a fresh target, with the compiled extension and without it (no
compiler: the install goes on, and what needs the extension says how to get it)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs in a subprocess with only the installed copy of fastload importable (the
# development install's editable finder is taken out first).
EPOCH = r"""
import sys
sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
sys.path_hooks[:] = [h for h in sys.path_hooks if "editable" not in repr(h).lower()]
sys.path_importer_cache.clear()
import io, torch, fastload, fastload.extension
from PIL import Image
assert fastload.__file__.startswith(sys.argv[1]), fastload.__file__
batches = list(fastload.DataLoader(list(range(10)), batch_size=2, num_workers=2, multiprocessing_context="fork"))
assert torch.cat(batches).tolist() == list(range(10))
from fastload.image import decoders
jpeg = io.BytesIO()
Image.new("RGB", (40, 30), "red").save(jpeg, "JPEG")
assert decoders.decode(jpeg.getvalue()).shape == (3, 30, 40)
assert decoders.jpeg_header(jpeg.getvalue())[:2] == (40, 30)
from fastload.lidar import Voxelizer
try:
    Voxelizer([0.5, 0.5, 4], [0, -4, -3, 8, 4, 1], 32, 100)(torch.rand(100, 4) * 4)
    print("extension", fastload.extension.available())
except fastload.extension.ExtensionMissingError as exc:
    print("missing:", exc)
"""


def _run(*args: str, env: dict[str, str] | None = None, cwd: str | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(args, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)
    assert result.returncode == 0, f"{args}:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


@pytest.fixture(scope="module")
def sdist(tmp_path_factory):
    """The sdist of the working tree's tracked files."""
    source = tmp_path_factory.mktemp("source")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for name in tracked.decode().split("\0"):
        if name and os.path.isfile(os.path.join(REPO, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(REPO, name), source / name)
    out = tmp_path_factory.mktemp("sdist")
    _run(sys.executable, "-m", "build", "--sdist", "--no-isolation", "--outdir", str(out), str(source))
    (archive,) = out.glob("fastload-*.tar.gz")
    return archive


def _wheel(sdist, out, env=None) -> zipfile.ZipFile:
    _run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--quiet", "-w", str(out),
         str(sdist), env=env)
    (wheel,) = out.glob("fastload-*.whl")
    return wheel


def _install_and_run(wheel, target) -> str:
    _run(sys.executable, "-m", "pip", "install", "--no-deps", "--quiet", "--target", str(target), str(wheel))
    env = dict(os.environ, PYTHONPATH=str(target))
    # run from the target, not from the checkout, whose fastload/ would come first on sys.path
    return _run(sys.executable, "-c", EPOCH, str(target), env=env, cwd=str(target)).stdout


def test_the_sdist_holds_the_extensions_sources_and_headers(sdist):
    with tarfile.open(sdist) as archive:
        names = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"fastload_ext/jpeg_region.h", "fastload_ext/voxelize.h", "fastload_ext/module.cpp", "setup.py",
            "pyproject.toml", "fastload/py.typed", "fastload/extension.py"} <= names


def test_the_wheel_built_from_the_sdist_works_from_a_fresh_target(sdist, tmp_path):
    wheel = _wheel(sdist, tmp_path / "wheel")
    names = zipfile.ZipFile(wheel).namelist()
    assert not [n for n in names if n.startswith("fastload_ext")], "fastload_ext/ is C++ sources, not a package"
    assert "fastload/py.typed" in names and any(n.startswith("fastload/_ext") and n.endswith(".so") for n in names)
    assert _install_and_run(wheel, tmp_path / "target").strip() == "extension True"


def test_without_a_compiler_the_install_goes_on_and_the_extension_says_how_to_get_it(sdist, tmp_path):
    env = dict(os.environ, CC="false", CXX="false")
    env.pop("FASTLOAD_EXTENSION", None)
    wheel = _wheel(sdist, tmp_path / "wheel", env=env)
    assert not [n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("fastload/_ext")]
    printed = _install_and_run(wheel, tmp_path / "target")
    assert printed.startswith("missing: fastload.lidar.Voxelizer needs fastload's compiled extension fastload._ext, "
                              "which is not installed"), printed
    assert "C++17 compiler and the libjpeg-turbo headers" in printed and "apt-get install" in printed
