"""Point-cloud readers: round trips, field order, and clear errors naming the file."""

from __future__ import annotations

import importlib.util
import sys

import numpy as np
import pytest

from fastload.lidar.io import PointCloudError, read_kitti_bin, read_pcd, read_point_cloud
from fastload.lidar.synthetic import make_scan


def write_pcd(path, columns: dict[str, np.ndarray], encoding: str) -> None:
    """A PCD v0.7 writer for the tests (fields of any numpy numeric dtype, COUNT 1)."""
    names = list(columns)
    kinds = {"f": "F", "i": "I", "u": "U"}
    n = len(next(iter(columns.values())))
    header = "\n".join([
        "# .PCD v0.7 - Point Cloud Data file format", "VERSION 0.7", "FIELDS " + " ".join(names),
        "SIZE " + " ".join(str(columns[c].dtype.itemsize) for c in names),
        "TYPE " + " ".join(kinds[columns[c].dtype.kind] for c in names), "COUNT " + " ".join("1" for _ in names),
        f"WIDTH {n}", "HEIGHT 1", "VIEWPOINT 0 0 0 1 0 0 0", f"POINTS {n}", f"DATA {encoding}", "",
    ]).encode()
    if encoding == "binary":
        records = np.zeros(n, dtype=[(c, columns[c].dtype) for c in names])
        for c in names:
            records[c] = columns[c]
        body = records.tobytes()
    else:
        body = "\n".join(" ".join(repr(float(columns[c][i])) for c in names) for i in range(n)).encode() + b"\n"
    with open(path, "wb") as f:
        f.write(header + body)


@pytest.fixture(scope="module")
def scan():
    return make_scan(3, beams=16, azimuth_steps=360)


def test_kitti_bin_round_trip_and_truncation(tmp_path, scan):
    path = tmp_path / "000001.bin"
    scan.tofile(path)
    cloud = read_point_cloud(path)
    assert cloud.fields == ("x", "y", "z", "intensity") and np.array_equal(cloud.points, scan)
    assert np.array_equal(cloud.field("intensity"), scan[:, 3]) and cloud.xyz.shape == (len(scan), 3)
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 6)
    with pytest.raises(PointCloudError, match=f"{path}.*not a whole number"):
        read_kitti_bin(path)


@pytest.mark.parametrize("encoding", ["ascii", "binary"])
def test_pcd_round_trip_with_extra_fields_and_any_field_order(tmp_path, scan, encoding):
    columns = {
        "intensity": scan[:, 3],
        "x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2],
        "ring": (np.arange(len(scan)) % 16).astype(np.uint16),
        "t": np.linspace(0, 0.1, len(scan)).astype(np.float64),
    }
    path = tmp_path / f"scan_{encoding}.pcd"
    write_pcd(path, columns, encoding)
    cloud = read_pcd(path)
    assert cloud.fields == ("x", "y", "z", "intensity", "ring", "t")
    assert cloud.points.dtype == np.float32
    assert np.array_equal(cloud.xyz, scan[:, :3]) and np.array_equal(cloud.field("intensity"), scan[:, 3])
    assert np.array_equal(cloud.field("ring"), columns["ring"].astype(np.float32))


def test_truncated_and_malformed_pcd_name_the_file(tmp_path, scan):
    path = tmp_path / "cut.pcd"
    write_pcd(path, {"x": scan[:, 0], "y": scan[:, 1], "z": scan[:, 2]}, "binary")
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(PointCloudError, match=f"{path}: truncated"):
        read_pcd(path)
    garbage = tmp_path / "garbage.pcd"
    garbage.write_bytes(np.random.default_rng(0).bytes(8192))
    with pytest.raises(PointCloudError, match=str(garbage)):
        read_pcd(garbage)
    no_xyz = tmp_path / "noxyz.pcd"
    write_pcd(no_xyz, {"a": scan[:, 0], "b": scan[:, 1]}, "ascii")
    with pytest.raises(PointCloudError, match="no x, y, z field"):
        read_pcd(no_xyz)
    with pytest.raises(PointCloudError, match="unknown point-cloud extension '.xyz'"):
        read_point_cloud(tmp_path / "scan.xyz")


def test_formats_needing_open3d_say_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "open3d", None)  # as if it were not installed
    path = tmp_path / "scan.ply"
    path.write_bytes(b"ply\nformat ascii 1.0\nend_header\n")
    with pytest.raises(PointCloudError, match="needs open3d"):
        read_point_cloud(path)


needs_open3d = pytest.mark.skipif(importlib.util.find_spec("open3d") is None,
                                  reason="open3d is not installed (the README's set-up installs it)")


def write_with_open3d(path, points: np.ndarray, **options) -> None:
    import open3d as o3d

    cloud = o3d.t.geometry.PointCloud(o3d.core.Tensor(np.ascontiguousarray(points[:, :3])))
    cloud.point["intensity"] = o3d.core.Tensor(np.ascontiguousarray(points[:, 3:4]))
    assert o3d.t.io.write_point_cloud(str(path), cloud, **options)


@needs_open3d
@pytest.mark.parametrize("name, options", [
    ("scan.ply", {"write_ascii": False}),
    ("scan.ply", {"write_ascii": True}),
    ("scan.pcd", {"write_ascii": False, "compressed": True}),  # binary_compressed
])
def test_open3d_formats_keep_float32_and_intensity(tmp_path, scan, name, options):
    write_with_open3d(tmp_path / name, scan, **options)
    cloud = read_point_cloud(tmp_path / name)
    assert cloud.fields == ("x", "y", "z", "intensity") and cloud.points.dtype == np.float32
    if options["write_ascii"]:
        np.testing.assert_allclose(cloud.points, scan, rtol=1e-5)  # open3d writes 6 significant digits
    else:
        np.testing.assert_array_equal(cloud.points, scan)


@needs_open3d
@pytest.mark.parametrize("name, options", [
    ("scan.ply", {"write_ascii": False}),
    ("scan.ply", {"write_ascii": True}),
    ("scan.pcd", {"write_ascii": False, "compressed": True}),
])
def test_truncated_open3d_formats_name_the_file(tmp_path, scan, name, options):
    # open3d itself only logs a truncated PLY and returns the cloud half-filled.
    whole = tmp_path / name
    write_with_open3d(whole, scan, **options)
    data = whole.read_bytes()
    for cut in (len(data) // 2, len(data) - 40, 40):
        path = tmp_path / f"cut{cut}_{name}"
        path.write_bytes(data[:cut])
        with pytest.raises(PointCloudError, match=str(path)):
            read_point_cloud(path)
