# `make bench`: set up .venv if needed, then compare fastload with torch's DataLoader.
# `make test`:  set up .venv if needed, then run the whole test suite.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastload-installed
# Pillow-SIMD replaces PIL/ in the venv; a stock Pillow of the version torchvision pulled
# stays in $(STOCK_PILLOW) so the bench can run torch's baseline on both (ENVIRONMENT.md).
PILLOW_SIMD := pillow-simd==12.1.1.post0
STOCK_PILLOW := $(VENV)/stock-pillow

.PHONY: bench test setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard fastload_ext/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -f /usr/include/jpeglib.h || { echo "fastload needs the libjpeg-turbo headers: apt-get install libjpeg62-turbo-dev" >&2; exit 1; }
	# open3d (compressed PCD reading) loads the system's libusb.
	ldconfig -p | grep -q 'libusb-1.0.so.0' \
		|| { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; } \
		|| echo "fastload set-up: libusb-1.0-0 is missing (apt-get install libusb-1.0-0): compressed PCD reading will fail" >&2
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test,dali,lidar,bench]"
	$(PY) -m pip install --quiet --no-deps --target $(STOCK_PILLOW) \
		"pillow==$$($(PY) -c 'import importlib.metadata as m; print(m.version("pillow"))')"
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(PILLOW_SIMD) \
		|| echo "fastload set-up: Pillow-SIMD could not be built here; stock Pillow stays active" >&2
	touch $(STAMP)

bench: $(STAMP)
	$(PY) -m fastload.bench $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info fastload/*.so
