"""The example scripts run as a user would run them."""

from __future__ import annotations

import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_train_synthetic_classifier_runs_and_learns():
    result = subprocess.run(
        [sys.executable, "examples/train_synthetic_classifier.py", "--steps", "30", "--batch-size", "32"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    losses = [float(line.split()[3]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert "samples/s" in result.stdout


def test_train_text_bucketing_runs_and_bucketing_cuts_padding():
    result = subprocess.run(
        [sys.executable, "examples/train_text_bucketing.py", "--sequences", "4000", "--steps", "30"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    padding = {line.split()[0]: float(line.split("padded tokens")[1].split("%")[0]) for line in result.stdout.splitlines()}
    assert padding["bucketed"] < 10 < padding["random"]
    assert "tokens/s" in result.stdout


def test_train_image_classifier_runs_and_reports_stall():
    result = subprocess.run(
        [sys.executable, "examples/train_image_classifier.py", "--steps", "5", "--size", "64", "--batch-size", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "images/s" in result.stdout and "data stall" in result.stdout


def test_train_lidar_pillars_runs_and_reports_scans_per_second(tmp_path):
    result = subprocess.run(
        [sys.executable, "examples/train_lidar_pillars.py", "--scans", "4", "--steps", "6"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    losses = [float(line.split()[3]) for line in result.stdout.splitlines() if line.startswith("step")]
    assert len(losses) == 1 and losses[0] > 0
    assert "scans/s" in result.stdout and "data stall" in result.stdout


def test_train_lidar_pillars_on_a_user_folder_without_labels(tmp_path):
    from fastload.lidar.synthetic import write_scan_folder

    root = write_scan_folder(str(tmp_path / "velodyne"), 3, beams=32, azimuth_steps=900)
    result = subprocess.run(
        [sys.executable, "examples/train_lidar_pillars.py", "--data", root, "--steps", "5", "--workers", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "generated" not in result.stdout and "scans/s" in result.stdout
