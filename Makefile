# `make bench`: set up .venv if needed, then compare fastload with torch's DataLoader.
# `make test`:  set up .venv if needed, then run the whole test suite.
# `make check`: `make test`, then `make sanitize` (what CI runs).
# `make peers`: try again to install the image bench's peers, FFCV and SPDL (bench and test
#   try once on their own).
# `make sanitize`: build fastload._ext with AddressSanitizer + UBSan (in build/sanitize/,
#   the in-place build stays) and run the tests that drive it; fails on any report.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.fastload-installed
# Pillow-SIMD replaces PIL/ in the venv; a stock Pillow of the version torchvision pulled
# stays in $(STOCK_PILLOW) so the bench can run torch's baseline on both. (Both packages own
# PIL/, so Pillow-SIMD cannot be a plain dependency: it is force-installed over Pillow.)
PILLOW_SIMD := pillow-simd==12.1.1.post0
STOCK_PILLOW := $(VENV)/stock-pillow

.PHONY: bench test setup clean sanitize check peers

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt $(wildcard fastload_ext/*)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	test -f /usr/include/jpeglib.h || { echo "fastload needs the libjpeg-turbo headers: apt-get install libjpeg62-turbo-dev" >&2; exit 1; }
	# open3d (compressed PCD reading) loads the system's libusb.
	ldconfig -p | grep -q 'libusb-1.0.so.0' \
		|| { test "$$(id -u)" = 0 && apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null; } \
		|| echo "fastload set-up: libusb-1.0-0 is missing (apt-get install libusb-1.0-0): compressed PCD reading will fail" >&2
	FASTLOAD_EXTENSION=required $(PY) -m pip install --quiet -c constraints.txt -e ".[test,dali,lidar,bench]"
	$(PY) -m pip install --quiet --no-deps --target $(STOCK_PILLOW) \
		"pillow==$$($(PY) -c 'import importlib.metadata as m; print(m.version("pillow"))')"
	$(PY) -m pip install --quiet --force-reinstall --no-deps $(PILLOW_SIMD) \
		|| echo "fastload set-up: Pillow-SIMD could not be built here; stock Pillow stays active" >&2
	touch $(STAMP)

# The image scenario's peers, FFCV and SPDL (fastload/bench/peers.py). Best effort: when
# they cannot be installed, the bench and the tests run without them and say why
# (`python -m fastload.bench.peers` prints each one's state), and `make peers` tries again
# and fails if one is still missing. FFCV 1.0.2 builds from its sdist against OpenCV 4 and
# libturbojpeg; SPDL 0.8 loads FFmpeg 5.1's libraries when it first decodes (Debian
# bookworm's packages below, installed with apt-get as root; each peer's apart, so that
# one missing package leaves the other peer). FFCV's own requirements name opencv-python,
# the GUI build: FFCV is installed without them and its runtime dependencies are listed
# here, with the headless OpenCV. numpy is pinned to the version already installed
# (numba accepts a range of numpy versions only), torch by constraints.txt.
PEER_DEBS_FFCV := libopencv-dev libturbojpeg0-dev
PEER_DEBS_SPDL := libavutil57 libavcodec59 libavformat59 libavfilter8 libavdevice59 libswresample4 libswscale6
PEER_PIP_FFCV := terminaltables pytorch-pfn-extras fastargs opencv-python-headless assertpy tqdm psutil numba
PEERS_STAMP := $(VENV)/.fastload-peers
PIN_NUMPY = "numpy==$$($(PY) -c 'import numpy; print(numpy.__version__)')"

$(PEERS_STAMP): $(STAMP) constraints.txt
	@for debs in "$(PEER_DEBS_FFCV)" "$(PEER_DEBS_SPDL)"; do \
		missing="$$(command -v dpkg >/dev/null && for p in $$debs; do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done)"; \
		if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
			{ apt-get update -qq && apt-get install -y -qq $$missing >/dev/null; } \
				|| echo "fastload set-up: apt-get install $$missing failed" >&2; \
		elif [ -n "$$missing" ]; then \
			echo "fastload set-up: the bench's peers need: apt-get install $$missing" >&2; \
		fi; \
	done; \
	$(PY) -m pip install --quiet -c constraints.txt $(PIN_NUMPY) spdl \
		|| echo "fastload set-up: SPDL could not be installed (above)" >&2; \
	{ $(PY) -m pip install --quiet -c constraints.txt $(PIN_NUMPY) $(PEER_PIP_FFCV) \
		&& $(PY) -m pip install --quiet -c constraints.txt --no-deps ffcv; } \
		|| echo "fastload set-up: FFCV could not be installed (above)" >&2; \
	$(PY) -m fastload.bench.peers | sed 's/^/fastload set-up: peer /' >&2
	touch $@

# Try the peers' installation again (after the system libraries above were installed);
# fails if a peer is still not usable.
peers:
	rm -f $(PEERS_STAMP)
	$(MAKE) $(PEERS_STAMP)
	$(PY) -m fastload.bench.peers

bench: $(STAMP) $(PEERS_STAMP)
	$(PY) -m fastload.bench $(ARGS)

test: $(STAMP) $(PEERS_STAMP)
	$(PY) -m pytest $(ARGS)

# What CI runs (.ci/run): the whole suite, then the sanitizer run.
check: test sanitize

clean:
	rm -rf $(VENV) build *.egg-info fastload/*.so

# The sanitized extension, built with gcc's runtimes (libasan8 and libubsan1 come with
# gcc). -fno-sanitize-recover: undefined behaviour aborts the test run, like an ASan error.
# -fno-wrapv overrides Python's -fwrapv, under which UBSan would not check signed overflow.
SANITIZE_DIR := build/sanitize
SANITIZE_FLAGS := -fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer -fno-wrapv -g
SANITIZE_TESTS := tests/test_jpeg_region.py tests/test_image.py tests/test_voxelize.py tests/test_properties.py

$(SANITIZE_DIR)/built: $(STAMP) setup.py $(wildcard fastload_ext/*)
	test -f "$$(gcc -print-file-name=libasan.so)" || { echo "make sanitize needs gcc's AddressSanitizer runtime: apt-get install libasan8 libubsan1" >&2; exit 1; }
	FASTLOAD_EXTENSION=required CFLAGS="$(SANITIZE_FLAGS)" CXXFLAGS="$(SANITIZE_FLAGS)" LDFLAGS="-fsanitize=address,undefined" \
		$(PY) setup.py -q build_ext --parallel 2 --build-lib $(SANITIZE_DIR)/lib --build-temp $(SANITIZE_DIR)/temp
	touch $@

# Every Python process of the run loads the sanitized build (tests/sanitize/sitecustomize.py).
# The ASan runtime is preloaded (it must come first), with libstdc++ so that its
# __cxa_throw interceptor finds the real one. PYTHONMALLOC=malloc puts Python objects on
# the malloc heap, where LeakSanitizer looks for pointers: memory reachable only from
# objects of pymalloc's arenas would otherwise all look leaked. ASan's reports go to files,
# one per process, so that none is lost with a child's stderr; any file fails the target.
# UBSan's go to stderr (gcc's UBSan ignores log_path next to ASan), and pytest captures
# Python's streams only (--capture=sys), so that a report that ends the run is shown.
# LeakSanitizer's own stop-the-world tracer sometimes segfaults at a process's exit ("Tracer
# caught signal 11 ... LeakSanitizer has encountered a fatal error": a runtime bug,
# google/sanitizers#1353). That is no report, and no leak check either: when it is all the
# files say, after passing tests, the run is repeated once; anything else fails the target.
SANITIZER_CRASH := LeakSanitizer has encountered a fatal error
sanitize: $(SANITIZE_DIR)/built
	for attempt in 1 2; do \
		rm -rf $(SANITIZE_DIR)/reports && mkdir -p $(SANITIZE_DIR)/reports; \
		FASTLOAD_SANITIZED_EXT="$$(echo $(abspath $(SANITIZE_DIR))/lib/fastload/_ext.*.so)" \
			PYTHONPATH="$(abspath tests/sanitize)" PYTHONMALLOC=malloc \
			LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libstdc++.so)" \
			ASAN_OPTIONS="detect_leaks=1:malloc_context_size=2:log_path=$(abspath $(SANITIZE_DIR)/reports)/asan" \
			LSAN_OPTIONS="suppressions=$(abspath tests/sanitize/lsan.supp):print_suppressions=0" \
			UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1" \
			$(PY) -m pytest -q --capture=sys $(SANITIZE_TESTS) $(ARGS); \
		status=$$?; \
		ls $(SANITIZE_DIR)/reports/* >/dev/null 2>&1 || exit $$status; \
		cat $(SANITIZE_DIR)/reports/*; \
		if [ $$attempt = 1 ] && [ $$status = 0 ] && ! grep -q "ERROR:" $(SANITIZE_DIR)/reports/* \
				&& [ -z "$$(grep -L '$(SANITIZER_CRASH)' $(SANITIZE_DIR)/reports/*)" ]; then \
			echo "make sanitize: only LeakSanitizer's tracer crashed (above), which checks nothing: once more" >&2; \
			continue; \
		fi; \
		echo "make sanitize: sanitizer reports above (in $(SANITIZE_DIR)/reports/)" >&2; exit 1; \
	done
