"""`make sanitize` puts this folder on PYTHONPATH: every Python process of the run, test
children and spawned workers included, then imports ``fastload._ext`` from the
AddressSanitizer/UBSan build named by $FASTLOAD_SANITIZED_EXT instead of the in-place
build, which stays as it is. The ASan runtime itself comes with LD_PRELOAD: it must be
loaded before anything else allocates."""

import importlib.util
import os
import sys

_SANITIZED_EXT = os.environ.get("FASTLOAD_SANITIZED_EXT")


class _SanitizedExtFinder:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name != "fastload._ext":
            return None
        return importlib.util.spec_from_file_location(name, _SANITIZED_EXT)


if _SANITIZED_EXT:
    sys.meta_path.insert(0, _SanitizedExtFinder())
