"""One GPU check: every CUDA test, then the GPU measurements, printed as one table.

    .venv/bin/python benchmarks/gpu_check.py

On a machine with a CUDA device it runs, in a few minutes on one GPU:

1. ``pytest -m cuda``: every test that needs a GPU (device prefetch, pinning on the host
   thread, nvJPEG decode, DALI ``mixed``, the GPU voxelizer bit-exact with the CPU one, a
   voxelizing model compiled whole on CUDA);
2. host-to-device transfer, fastload's ``device="cuda"`` against torch's
   ``pin_memory=True`` + ``.cuda(non_blocking=True)``: the data rate (GB/s) with nothing
   else to do, and the training thread's ms per batch while the GPU runs a step;
3. images/s, decoding on the GPU (fastload's nvJPEG path, DALI ``mixed``) against the
   same pipelines on the CPU (fastload's fused decode, DALI's CPU pipeline);
4. µs per scan of the GPU voxelizer against the C++ one (and spconv's GPU
   ``PointToVoxel`` when it imports), with a bit-exactness check of every output.

Ratios are of measurements taken in the same run, interleaved. Without CUDA it says so
in one line and exits 0. Exits 1 if a test or a check failed.
"""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from a checkout without installing

from fastload.device import cuda_usable  # noqa: E402

Row = tuple[str, str, str, str]  # what, fastload, baseline, ratio / verdict


def cuda_tests() -> tuple[list[Row], bool]:
    started = time.perf_counter()
    command = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-p", "no:cacheprovider", "--timeout", "120",
               os.path.join(REPO, "tests")]
    try:
        result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:  # the measurements still run
        output = exc.stdout.decode() if isinstance(exc.stdout, bytes) else exc.stdout or ""
        print(output[-6000:], file=sys.stderr)
        return [("CUDA tests (pytest -m cuda)", "timed out", "300 s", "FAILED")], False
    tail = result.stdout.strip().splitlines()[-1] if result.stdout.strip() else result.stderr[-200:]
    counts = {kind: int(n) for n, kind in re.findall(r"(\d+) (passed|failed|skipped|error|errors)", tail)}
    ok = result.returncode == 0 and counts.get("passed", 0) > 0
    if not ok:
        print(result.stdout[-6000:], file=sys.stderr)
    summary = ", ".join(f"{n} {kind}" for kind, n in counts.items()) or tail
    return [("CUDA tests (pytest -m cuda)", summary, f"{time.perf_counter() - started:.0f} s",
             "ok" if ok else "FAILED")], ok


def _gpu_step(ms: float) -> Callable[[torch.Tensor], None]:
    """A training step's stand-in: ``ms`` of GPU time that reads the batch. Like a real
    loop (a loss read back, an optimizer step), the CPU waits for the step before last,
    so it runs at most one step ahead of the GPU."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    torch.cuda._sleep(10_000_000)
    end.record()
    end.synchronize()
    cycles = int(10_000_000 * ms / start.elapsed_time(end))

    previous: list[torch.cuda.Event] = []

    def step(images: torch.Tensor) -> None:
        images[:1, :1, :1, :1].float().sum()
        torch.cuda._sleep(cycles)
        done = torch.cuda.Event()
        done.record()
        previous.append(done)
        if len(previous) > 1:
            previous.pop(0).synchronize()

    return step


def transfer_rows(workers: int, batches: int = 60, batch_size: int = 64) -> list[Row]:
    import torch.utils.data as tud

    import fastload
    from fastload.bench.scenarios import PreDecodedImages

    dataset = PreDecodedImages(batches * batch_size)
    batch_bytes = batch_size * 3 * 224 * 224
    torch_loader = tud.DataLoader(dataset, batch_size=batch_size, num_workers=workers, pin_memory=True,
                                  persistent_workers=True)
    ours = fastload.DataLoader(dataset, batch_size=batch_size, num_workers=workers, device="cuda",
                               persistent_workers=True)

    def run(loader: Any, explicit_copy: bool, step: Callable[[torch.Tensor], None] | None) -> tuple[float, float]:
        """(wall seconds, training-thread seconds in next() and the copy call), for one epoch."""
        torch.cuda.synchronize()
        on_thread = 0.0
        started = time.perf_counter()
        iterator = iter(loader)
        while True:
            asked = time.perf_counter()
            try:
                images, _labels = next(iterator)
            except StopIteration:
                break
            if explicit_copy:
                images = images.cuda(non_blocking=True)
            on_thread += time.perf_counter() - asked
            if step is not None:
                step(images)
        torch.cuda.synchronize()
        return time.perf_counter() - started, on_thread

    step = _gpu_step(3.0)
    rates: dict[str, list[float]] = {"fastload": [], "torch": []}
    thread_ms: dict[str, list[float]] = {"fastload": [], "torch": []}
    for loader, copy in ((ours, False), (torch_loader, True)):
        run(loader, copy, None)  # warm-up: workers start, pinned pools fill
    for _ in range(3):
        for name, loader, copy in (("fastload", ours, False), ("torch", torch_loader, True)):
            wall, _ = run(loader, copy, None)
            rates[name].append(batches * batch_bytes / wall / 1e9)
            _, on_thread = run(loader, copy, step)
            thread_ms[name].append(on_thread / batches * 1e3)
    rate = {k: statistics.median(v) for k, v in rates.items()}
    ms = {k: statistics.median(v) for k, v in thread_ms.items()}
    return [
        (f"loader-to-GPU data rate, GB/s (uint8 {batch_size}x3x224x224, {workers} workers)", f"{rate['fastload']:.2f}",
         f"torch pin_memory {rate['torch']:.2f}", f"{rate['fastload'] / rate['torch']:.2f}x"),
        ("training-thread ms per batch (3 ms GPU step)", f"{ms['fastload']:.3f}", f"torch pin_memory {ms['torch']:.3f}",
         f"{ms['torch'] / ms['fastload']:.2f}x less" if ms["fastload"] else "-"),
    ]


def image_rows(workers: int, images: int = 1024, batch_size: int = 64) -> list[Row]:
    import fastload
    from fastload.bench.images import make_image_folder
    from fastload.image import ImageFolder, RandomResizedCropDecode
    from fastload.image.dali import DaliImageLoader, dali_available

    root = make_image_folder(os.path.join(tempfile.mkdtemp(prefix="fastload-gpu-check-"), "images"), images)

    def fused(device: str) -> Any:
        transform = RandomResizedCropDecode(224, device=device)
        return fastload.DataLoader(ImageFolder(root, transform=transform), batch_size=batch_size, shuffle=True,
                                   num_workers=workers, persistent_workers=True,
                                   batch_transform=transform.finish_batch, device="cuda")

    loaders: dict[str, Any] = {"fastload nvJPEG": fused("cuda"), "fastload CPU fused": fused("cpu")}
    if dali_available():
        folder = ImageFolder(root)
        loaders["DALI mixed"] = DaliImageLoader(folder, batch_size, num_threads=workers, device="gpu")
        loaders["DALI cpu"] = DaliImageLoader(folder, batch_size, num_threads=workers, device="cpu")

    def rate(loader: Any) -> float:
        torch.cuda.synchronize()
        started, count = time.perf_counter(), 0
        for batch, _labels in loader:
            batch = batch.cuda(non_blocking=True)  # DALI's CPU pipeline gives host batches: all end on the GPU
            count += len(batch)
        torch.cuda.synchronize()
        return count / (time.perf_counter() - started)

    for loader in loaders.values():
        rate(loader)  # warm-up
    rates: dict[str, list[float]] = {name: [] for name in loaders}
    for _ in range(3):
        for name, loader in loaders.items():
            rates[name].append(rate(loader))
    med = {k: statistics.median(v) for k, v in rates.items()}
    rows = [(f"images/s, RandomResizedCrop 224 ({images} JPEGs, {workers} workers)", f"nvJPEG {med['fastload nvJPEG']:.0f}",
             f"CPU fused {med['fastload CPU fused']:.0f}", f"{med['fastload nvJPEG'] / med['fastload CPU fused']:.2f}x")]
    if "DALI mixed" in med:
        rows.append(("images/s, DALI", f"mixed {med['DALI mixed']:.0f}", f"cpu {med['DALI cpu']:.0f}",
                     f"{med['DALI mixed'] / med['DALI cpu']:.2f}x"))
    else:
        rows.append(("images/s, DALI", "-", "-", "DALI not installed"))
    return rows


def voxelizer_rows(calls: int = 30) -> tuple[list[Row], bool]:
    from fastload.bench.lidar import CONFIGS, spconv_available
    from fastload.lidar import Voxelizer
    from fastload.lidar.synthetic import make_scan

    scan = make_scan(0)
    gpu_points = torch.from_numpy(scan).cuda()
    rows, exact_everywhere = [], True

    def median_us(fn: Callable[[], Any]) -> float:
        fn()
        torch.cuda.synchronize()
        times = []
        for _ in range(calls):
            started = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            times.append((time.perf_counter() - started) * 1e6)
        return statistics.median(times)

    for name, config in CONFIGS.items():
        voxelizer = Voxelizer(*config)
        cpu = voxelizer(scan, return_point_voxel_id=True)
        gpu = voxelizer(gpu_points, return_point_voxel_id=True)
        exact = all(torch.equal(g.cpu(), torch.from_numpy(c)) for g, c in zip(gpu, cpu))
        exact_everywhere &= exact
        gpu_us = median_us(lambda: voxelizer(gpu_points))
        cpu_us = median_us(lambda: voxelizer(scan))
        spconv = ""
        if spconv_available():
            try:
                from spconv.pytorch.utils import PointToVoxel

                theirs = PointToVoxel(vsize_xyz=config[0], coors_range_xyz=config[1], num_point_features=scan.shape[1],
                                      max_num_voxels=config[3], max_num_points_per_voxel=config[2],
                                      device=torch.device("cuda"))
                spconv = f"; spconv GPU {median_us(lambda: theirs(gpu_points)):.0f}"
            except Exception as exc:  # spconv's CUDA build may not match this GPU
                spconv = f"; spconv GPU: {type(exc).__name__}"
        rows.append((f"voxelizer µs/scan, {name} ({len(scan)} points)", f"GPU {gpu_us:.0f}",
                     f"C++ CPU {cpu_us:.0f}{spconv}", f"{cpu_us / gpu_us:.2f}x; " + ("bit-exact" if exact else "DIFFERS")))
    return rows, exact_everywhere


def main() -> int:
    if not cuda_usable():
        print(f"gpu_check: no CUDA device here (torch {torch.__version__}, CUDA build {torch.version.cuda}, "
              f"torch.cuda.is_available() = {torch.cuda.is_available()}): nothing to check.")
        return 0
    workers = min(4, os.cpu_count() or 1)
    started = time.perf_counter()
    rows: list[Row] = []
    ok = True
    test_rows, tests_ok = cuda_tests()
    rows += test_rows
    ok &= tests_ok
    sections: list[tuple[str, Callable[[], list[Row] | tuple[list[Row], bool]]]] = [
        ("host-to-device transfer", lambda: transfer_rows(workers)), ("GPU image decode", lambda: image_rows(workers)),
        ("GPU voxelizer", voxelizer_rows)]
    for name, section in sections:
        try:
            result = section()
            if isinstance(result, tuple):
                result, exact = result
                ok &= exact
            rows += result
        except Exception:  # one broken check does not hide the others
            ok = False
            traceback.print_exc()
            rows.append((name, "-", "-", "ERROR (traceback above)"))
    width = [max(len(r[i]) for r in rows + [("check", "fastload", "baseline", "ratio")]) for i in range(4)]
    print(f"gpu_check: {torch.cuda.get_device_name()}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{time.perf_counter() - started:.0f} s")
    for row in [("check", "fastload", "baseline", "ratio"), tuple("-" * w for w in width), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, width)).rstrip())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
