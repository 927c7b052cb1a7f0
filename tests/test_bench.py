"""python -m fastload.bench runs end to end and prints the comparison table."""

from __future__ import annotations

import json
import re
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_bench_prints_table_and_writes_nothing(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "overhead", "--batches", "8", "--repeats", "2", "--batch-size", "8"],
        cwd=tmp_path, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split() for line in result.stdout.splitlines() if line.startswith("overhead ")}
    assert set(rows) == {"torch", "fastload", "fastload+telemetry"}
    assert "overhead: telemetry on / off (fastload+telemetry / fastload, repeat by repeat): " in result.stdout
    assert float(rows["torch"][2]) > 0 and float(rows["fastload"][2]) > 0
    assert rows["fastload"][5].endswith("x")  # min ratio column
    # CPU ms per sample (main process + workers) and its ratio to torch's
    assert float(rows["torch"][6]) > 0 and float(rows["fastload"][10]) > 0 and rows["fastload"][11].endswith("x")
    assert list(tmp_path.iterdir()) == []


def test_json_and_plot_are_written_when_asked(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "overhead", "text", "--batches", "6", "--repeats", "2",
         "--json", str(tmp_path / "bench.json"), "--plot", str(tmp_path / "bench.png")],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": REPO},
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json", "bench.png"]
    report = json.loads((tmp_path / "bench.json").read_text())
    assert {"cpu", "cores", "torch", "pillow", "dali"} <= set(report["environment"])
    overhead = report["scenarios"]["overhead"]
    assert overhead["baseline"] == "torch" and len(overhead["loaders"]["fastload"]["batches_per_s"]) == 2
    assert overhead["loaders"]["fastload"]["vs_baseline"]["median"] > 0
    assert len(overhead["loaders"]["torch"]["cpu_ms_per_sample"]) == 2 and overhead["loaders"]["fastload"]["cpu_vs_baseline"] > 0
    assert {"fetch", "collate", "transfer", "wait"} <= set(overhead["loaders"]["fastload+telemetry"]["stages_ms_per_batch"])
    assert report["scenarios"]["text"]["loaders"]["fastload+bucket"]["notes"]["padding"].endswith("%")
    png = (tmp_path / "bench.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    # The README's performance section is generated from such a file.
    readme = tmp_path / "README.md"
    readme.write_text(open(os.path.join(REPO, "README.md")).read())
    generated = subprocess.run([sys.executable, "benchmarks/readme_performance.py", str(tmp_path / "bench.json"),
                                "--readme", str(readme)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert generated.returncode == 0, generated.stderr
    text = readme.read_text()
    assert f"{report['environment']['cores']} cores" in text and "| overhead (batch 64) | fastload+telemetry |" in text
    assert "- overhead: telemetry on / off" in text and text.count("<!-- performance:") == 2
    assert "CPU ms/sample (vs baseline)" in text and "×) |" in text


def test_cpu_time_counts_the_workers_and_the_children_they_reaped():
    from fastload.bench.cpu_time import tree_cpu_seconds

    burn = "import time\nend = time.process_time() + 0.6\nwhile time.process_time() < end: pass"
    before = tree_cpu_seconds()
    # a child that burns 0.6 s and a grandchild (reaped by the child) that burns 0.6 s
    subprocess.run([sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {burn!r}])\n{burn}"],
                   check=True, timeout=60)
    used = tree_cpu_seconds() - before
    assert 1.2 <= used < 3.0


def test_text_scenario_reports_padding_and_bucketing_cuts_it():
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "text", "--batches", "6", "--repeats", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if line.startswith("text")}
    assert set(rows) == {"torch", "fastload", "fastload+bucket"}
    padding = {name: float(row.split("padding ")[1].rstrip("%")) for name, row in rows.items()}
    assert padding["fastload+bucket"] <= 5.0 < padding["torch"] == padding["fastload"]


def test_image_scenario_on_a_users_folder(tmp_path):
    from fastload.bench.images import make_image_folder

    root = make_image_folder(tmp_path / "photos", 96, classes=3)
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "image", "--data", str(root), "--repeats", "1", "--batch-size", "16"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("image ")}
    assert "fastload" in rows and any(r.startswith("torch") for r in rows)
    assert "in-run ceiling" in result.stdout and "decode simplejpeg" in result.stdout
    assert re.search(rf"{re.escape(str(root))} \(your images\): 96 images, 0\.2\d bytes per pixel, chroma 4:2:0 96 ", result.stdout)
    # The peers run where `make peers` installed them, with the notes that make the comparison fair;
    # elsewhere the report says which are missing and why.
    from fastload.bench import peers

    for peer in ("ffcv", "spdl"):
        reason = peers.unavailable(peer)
        assert (peer in rows) == (reason is None)
        assert reason is None or f"{peer}: {reason}" in result.stdout
    if "ffcv" in rows:
        assert re.search(r"ffcv: \.beton written in [\d.]+ s \(not timed\), JPEGs re-encoded by OpenCV at quality 94: "
                         r"0\.\d\d bytes per pixel; first run \(numba compiles the pipeline\) [\d.]+ s", result.stdout)
    if "ffcv" in rows or "spdl" in rows:
        assert all(f"image: peers, {line}" in result.stdout for line in peers.FAIRNESS)
        assert re.search(r"image: peers, threads: (ffcv \d+|spdl 2|ffcv \d+, spdl 2) \(the others: 2 workers", result.stdout)


def test_imagenet_like_images_have_imagenets_bytes_per_pixel_and_chroma(tmp_path):
    from fastload.bench.images import jpeg_statistics, make_image_folder

    bytes_per_pixel, chroma = jpeg_statistics(make_image_folder(tmp_path / "photos", 60, imagenet_like=True))
    assert 0.55 <= bytes_per_pixel <= 0.65 and chroma == {"4:2:0": 60}
    plain, _ = jpeg_statistics(make_image_folder(tmp_path / "plain", 60))
    assert plain < 0.3


def test_bench_rejects_unknown_scenarios():
    result = subprocess.run([sys.executable, "-m", "fastload.bench", "nope"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and "unknown scenario" in result.stderr


def test_lidar_baselines_voxelize_like_fastload():
    # The loaders compared in the lidar scenario must do the same work.
    import numpy as np
    import torch

    from fastload.bench.lidar import CONFIGS, NumpyVoxelizer, SpconvVoxelizer, spconv_available
    from fastload.lidar import Voxelizer
    from fastload.lidar.synthetic import make_scan

    scan = make_scan(5, beams=32, azimuth_steps=900)
    for config in CONFIGS.values():
        ours = Voxelizer(*config)(scan)
        baselines = [NumpyVoxelizer(*config)] + ([SpconvVoxelizer(*config)] if spconv_available() else [])
        for baseline in baselines:
            for mine, theirs in zip(ours, baseline(scan)):
                theirs = theirs.numpy() if isinstance(theirs, torch.Tensor) else theirs
                assert mine.dtype == theirs.dtype and np.array_equal(mine, theirs)


def test_lidar_scenario_on_a_users_scans(tmp_path):
    from fastload.bench.lidar import spconv_available
    from fastload.lidar.synthetic import write_scan_folder

    root = write_scan_folder(str(tmp_path / "velodyne"), 4, beams=32, azimuth_steps=900)
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "lidar", "--scans", root, "--repeats", "1", "--batch-size", "2"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    rows = [line for line in result.stdout.splitlines() if line.startswith("lidar ")]
    assert any(" fastload " in row and row.split()[-1].endswith("x") for row in rows)
    assert any(row.split()[1] == "torch" for row in rows)
    assert f"{root}: 4 scans" in result.stdout and "scans/s" in result.stdout
    table = [line for line in result.stdout.splitlines() if "fastload / copy" in line]
    assert [line.split()[1] for line in table] == ["PointPillars", "SECOND", "CenterPoint"]
    latency = [line for line in result.stdout.splitlines() if " ms (" in line and "of the budget at p99" in line]
    assert [line.split()[1] for line in latency] == ["fastload", "spconv" if spconv_available() else "numpy"]
    for line in latency:  # p50 <= p99 <= max, all positive
        p50, p99, top = (float(v) for v in line.split()[2:7:2])
        assert 0 < p50 <= p99 <= top
    assert "over 8 scans, against the 100 ms real-time budget" in result.stdout


def test_gpu_check_without_cuda_says_so_in_one_line_and_exits_0():
    import pytest

    from fastload.device import cuda_usable

    if cuda_usable():
        pytest.skip("this machine has a GPU: gpu_check runs its checks")
    result = subprocess.run([sys.executable, os.path.join("benchmarks", "gpu_check.py")], cwd=REPO,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 1 and "no CUDA device here" in result.stdout


def test_startup_scenario_times_both_loaders_for_every_start_method(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "fastload.bench", "startup", "--repeats", "1", "--workers", "2", "--index-items", "20000",
         "--json", str(tmp_path / "bench.json")],
        cwd=REPO, capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    rows = {line.split()[1]: line.split()[2:] for line in result.stdout.splitlines()
            if line.startswith("startup: ") and line.split()[1] in ("fork", "forkserver", "spawn")}
    assert set(rows) == {"fork", "forkserver", "spawn"}
    for method, cells in rows.items():
        seconds = [float(v) for v in cells[:4]]
        assert all(s > 0 for s in seconds) and cells[4].endswith("x") and cells[5].endswith("x"), method
    assert "2 workers, an index of 20,000 paths" in result.stdout
    assert "batches/s" not in result.stdout  # no throughput table without a throughput scenario
    report = json.loads((tmp_path / "bench.json").read_text())
    assert report["scenarios"] == {} and sum(n.startswith("startup: spawn ") for n in report["notes"]) == 1
