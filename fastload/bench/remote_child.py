"""The child's side of a remote contender (the protocol: ``remote.py``): builds
``scenarios.LOADERS[factory](**kwargs)`` and times the runs the parent asks for."""

from __future__ import annotations

import gc
import json
import sys

from fastload.image import pillow_flavour

from .scenarios import LOADERS
from .timing import time_run


def main() -> None:
    spec = json.loads(sys.stdin.readline())
    loader = LOADERS[spec["factory"]](**spec["kwargs"])
    print(json.dumps({"ready": True, "pillow": pillow_flavour()}), flush=True)
    for line in sys.stdin:
        count, seconds = time_run(loader, json.loads(line)["run"])
        print(json.dumps({"count": count, "seconds": seconds}), flush=True)
    # Stop persistent workers now, while the interpreter is whole: torch skips its worker
    # shutdown once interpreter exit has begun, and the exit then waits on the workers.
    del loader
    gc.collect()


if __name__ == "__main__":
    main()
