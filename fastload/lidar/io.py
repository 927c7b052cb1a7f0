"""Reading point clouds: KITTI ``.bin``, PCD v0.7, PLY, as float32 ``(N, C)`` with field names.

KITTI and the common PCD cases (``ascii``, ``binary``) are read with numpy: a binary PCD
is one ``np.frombuffer`` with the header's record layout, about 1.5 ms where open3d takes
17–24 ms and 70–185 MB of imports (ENVIRONMENT.md). ``binary_compressed`` PCD and PLY go
through open3d's tensor API (``o3d.t.io``, which keeps float32 and extra fields), imported
only then. Every malformed or truncated file raises ``PointCloudError`` naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

KITTI_FIELDS = ("x", "y", "z", "intensity")
_PCD_TYPES = {("F", 4): "<f4", ("F", 8): "<f8", ("I", 1): "i1", ("I", 2): "<i2", ("I", 4): "<i4", ("I", 8): "<i8",
              ("U", 1): "u1", ("U", 2): "<u2", ("U", 4): "<u4", ("U", 8): "<u8"}


class PointCloudError(ValueError):
    """A point-cloud file that cannot be read; the message names the file."""


@dataclass
class PointCloud:
    """``points`` ``(N, C)`` float32 whose columns are ``fields`` (x, y, z first)."""

    points: np.ndarray
    fields: tuple[str, ...]

    def field(self, name: str) -> np.ndarray:
        try:
            return self.points[:, self.fields.index(name)]
        except ValueError:
            raise KeyError(f"no field {name!r}; fields are {self.fields}") from None

    @property
    def xyz(self) -> np.ndarray:
        return self.points[:, :3]

    def __len__(self) -> int:
        return len(self.points)


def read_kitti_bin(path: str | os.PathLike[str], fields: tuple[str, ...] = KITTI_FIELDS) -> PointCloud:
    """A KITTI velodyne scan: float32 records of ``len(fields)`` values (x, y, z, intensity)."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    record = 4 * len(fields)
    if size % record:
        raise PointCloudError(f"{path}: {size} bytes is not a whole number of {len(fields)}-float32 records "
                              f"({record} bytes each): truncated or not a KITTI .bin file")
    return PointCloud(np.fromfile(path, dtype=np.float32).reshape(-1, len(fields)), tuple(fields))


def _pcd_header(path: str, data: bytes) -> tuple[dict[str, list[str]], int]:
    header: dict[str, list[str]] = {}
    offset = 0
    while True:
        end = data.find(b"\n", offset)
        if end < 0:
            raise PointCloudError(f"{path}: PCD header has no DATA line")
        line = data[offset:end].decode("ascii", errors="replace").strip()
        offset = end + 1
        if not line or line.startswith("#"):
            continue
        key, *values = line.split()
        header[key.upper()] = values
        if key.upper() == "DATA":
            return header, offset
        if offset > 4096:
            raise PointCloudError(f"{path}: not a PCD file (no DATA line in the first 4 KiB)")


def _pcd_dtype(path: str, header: dict[str, list[str]]) -> tuple[np.dtype, list[str]]:
    try:
        names = header["FIELDS"]
        sizes = [int(s) for s in header["SIZE"]]
        types = header["TYPE"]
        counts = [int(c) for c in header.get("COUNT", ["1"] * len(names))]
    except (KeyError, ValueError) as exc:
        raise PointCloudError(f"{path}: PCD header lacks or garbles FIELDS/SIZE/TYPE/COUNT ({exc})") from exc
    if not len(names) == len(sizes) == len(types) == len(counts):
        raise PointCloudError(f"{path}: PCD header FIELDS/SIZE/TYPE/COUNT have different lengths")
    columns, formats = [], []
    for name, size, kind, count in zip(names, sizes, types, counts):
        if (kind, size) not in _PCD_TYPES:
            raise PointCloudError(f"{path}: PCD field {name!r} has unsupported TYPE {kind} SIZE {size}")
        for k in range(count):
            columns.append(name if count == 1 else f"{name}_{k}")
            formats.append(_PCD_TYPES[(kind, size)])
    return np.dtype({"names": [f"f{i}" for i in range(len(columns))], "formats": formats}), columns


def read_pcd(path: str | os.PathLike[str]) -> PointCloud:
    """A PCD v0.7 file. ``ascii`` and ``binary`` are read here; ``binary_compressed`` needs open3d."""
    path = os.fspath(path)
    with open(path, "rb") as f:
        data = f.read()
    header, offset = _pcd_header(path, data)
    encoding = header["DATA"][0].lower() if header["DATA"] else ""
    if encoding == "binary_compressed":
        return _read_with_open3d(path)
    dtype, columns = _pcd_dtype(path, header)
    try:
        count = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
    except (KeyError, ValueError, IndexError) as exc:
        raise PointCloudError(f"{path}: PCD header has no valid POINTS or WIDTH/HEIGHT") from exc
    if encoding == "binary":
        needed = count * dtype.itemsize
        if len(data) - offset < needed:
            raise PointCloudError(f"{path}: truncated: {count} points need {needed} bytes of data, "
                                  f"the file has {len(data) - offset}")
        records = np.frombuffer(data, dtype=dtype, count=count, offset=offset)
        table = np.stack([records[name].astype(np.float32) for name in dtype.names], axis=1) if count else \
            np.zeros((0, len(columns)), np.float32)
    elif encoding == "ascii":
        rows = data[offset:].split()
        if len(rows) < count * len(columns):
            raise PointCloudError(f"{path}: truncated: {count} points of {len(columns)} values need "
                                  f"{count * len(columns)} numbers, the file has {len(rows)}")
        try:
            table = np.array(rows[: count * len(columns)], dtype=np.float32).reshape(count, len(columns))
        except ValueError as exc:
            raise PointCloudError(f"{path}: malformed ascii data: {exc}") from exc
    else:
        raise PointCloudError(f"{path}: unknown PCD DATA encoding {encoding!r}")
    return _xyz_first(path, table, columns)


_PLY_SCALAR_BYTES = {"char": 1, "uchar": 1, "int8": 1, "uint8": 1, "short": 2, "ushort": 2, "int16": 2,
                     "uint16": 2, "int": 4, "uint": 4, "int32": 4, "uint32": 4, "float": 4, "float32": 4,
                     "double": 8, "float64": 8}


def _check_ply_complete(path: str) -> None:
    """Raises unless the PLY file holds all the elements its header announces.

    open3d reports a truncated PLY only as a log line and returns the cloud with the
    missing points left as they were allocated, so the size is checked here: exactly for
    binary files of fixed-size elements (point clouds), by line count for ascii ones.
    """
    with open(path, "rb") as f:
        data = f.read()
    end = data.find(b"end_header")
    if not data.startswith(b"ply"):
        raise PointCloudError(f"{path}: not a PLY file (no 'ply' magic)")
    if end < 0:
        raise PointCloudError(f"{path}: truncated PLY header (no end_header)")
    body = data.index(b"\n", end) + 1 if b"\n" in data[end:] else len(data)
    encoding, elements = "", []  # (name, count, bytes per element or None when it has a list)
    for line in data[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if words[:1] == ["format"] and len(words) > 1:
            encoding = words[1]
        elif words[:1] == ["element"] and len(words) == 3 and words[2].isdigit():
            elements.append([words[1], int(words[2]), 0])
        elif words[:1] == ["property"] and elements and elements[-1][2] is not None:
            size = _PLY_SCALAR_BYTES.get(words[1]) if len(words) == 3 else None
            elements[-1][2] = None if size is None else elements[-1][2] + size
    if encoding == "ascii":
        lines = len(data[body:].split(b"\n")) - (data.endswith(b"\n"))
        expected = sum(count for _, count, _ in elements)
        if lines < expected:
            raise PointCloudError(f"{path}: truncated: the header announces {expected} elements, "
                                  f"the file has {lines} lines of data")
    elif encoding.startswith("binary") and all(size is not None for _, _, size in elements):
        expected = sum(count * size for _, count, size in elements)
        if len(data) - body < expected:
            raise PointCloudError(f"{path}: truncated: {', '.join(f'{count} {name}' for name, count, _ in elements)} "
                                  f"need {expected} bytes of data, the file has {len(data) - body}")


def read_ply(path: str | os.PathLike[str]) -> PointCloud:
    """A PLY point cloud, through open3d's tensor API (after checking the file is whole)."""
    path = os.fspath(path)
    _check_ply_complete(path)
    return _read_with_open3d(path)


def read_point_cloud(path: str | os.PathLike[str]) -> PointCloud:
    """By extension: ``.bin`` (KITTI), ``.pcd``, ``.ply``."""
    extension = os.path.splitext(os.fspath(path))[1].lower()
    readers = {".bin": read_kitti_bin, ".pcd": read_pcd, ".ply": read_ply}
    if extension not in readers:
        raise PointCloudError(f"{path}: unknown point-cloud extension {extension!r} (expected .bin, .pcd or .ply)")
    return readers[extension](path)


def _xyz_first(path: str, table: np.ndarray, columns: list[str]) -> PointCloud:
    missing = [axis for axis in "xyz" if axis not in columns]
    if missing:
        raise PointCloudError(f"{path}: no {', '.join(missing)} field(s) among {columns}")
    order = [columns.index(axis) for axis in "xyz"] + [i for i, c in enumerate(columns) if c not in "xyz"]
    return PointCloud(np.ascontiguousarray(table[:, order], dtype=np.float32), tuple(columns[i] for i in order))


def _read_with_open3d(path: str) -> PointCloud:
    try:
        import open3d as o3d
    except (ImportError, OSError) as exc:  # OSError: open3d is there but a system library is not
        raise PointCloudError(f"{path}: reading this format needs open3d (pip install open3d-cpu; "
                              f"it loads the system's libusb-1.0-0): {exc}") from exc
    cloud = o3d.t.io.read_point_cloud(path)
    attributes = {name: cloud.point[name].numpy() for name in cloud.point}
    if "positions" not in attributes or len(attributes["positions"]) == 0 and os.path.getsize(path) > 512:
        raise PointCloudError(f"{path}: open3d could not read any points (corrupt or truncated?)")
    columns, arrays = ["x", "y", "z"], [attributes.pop("positions").astype(np.float32)]
    for name, values in attributes.items():
        values = values.reshape(len(values), -1).astype(np.float32)
        columns += [name] if values.shape[1] == 1 else [f"{name}_{k}" for k in range(values.shape[1])]
        arrays.append(values)
    return PointCloud(np.ascontiguousarray(np.concatenate(arrays, axis=1)), tuple(columns))
