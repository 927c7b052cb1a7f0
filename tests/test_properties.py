"""Property tests (hypothesis) for the parts users feed arbitrary data: collators, the
voxelizer and the point-cloud readers. Each either gives the right answer or a clear
error; none crashes the interpreter."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastload
from fastload.lidar import Voxelizer, dynamic_voxelize
from fastload.lidar.io import PointCloudError, read_point_cloud

from . import voxel_reference as ref
from .test_lidar_io import PLY_TYPE_NAMES, write_pcd, write_ply

PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- default_collate: the same result as torch's on any nesting of same-shaped leaves ---

leaf_shapes = st.lists(st.integers(1, 3), min_size=0, max_size=2).map(tuple)


@st.composite
def batches(draw):
    """A batch of samples sharing one random structure: tensors, arrays, numbers,
    strings, dicts and tuples nested up to two levels."""
    def structure(depth):
        leaves = [st.tuples(st.just("tensor"), leaf_shapes, st.sampled_from([torch.float32, torch.int64])),
                  st.tuples(st.just("array"), leaf_shapes), st.just(("int",)), st.just(("float",)),
                  st.just(("str",))]
        if depth == 0:
            return st.one_of(leaves)
        return st.one_of(*leaves, st.dictionaries(st.sampled_from("abc"), structure(depth - 1), min_size=1, max_size=3),
                         st.lists(structure(depth - 1), min_size=1, max_size=3).map(tuple))
    shape = draw(structure(2))
    size = draw(st.integers(1, 4))

    def sample(spec, k):
        if isinstance(spec, dict):
            return {key: sample(v, k) for key, v in spec.items()}
        if isinstance(spec, tuple) and spec and isinstance(spec[0], str):
            kind = spec[0]
            if kind == "tensor":
                return torch.full(spec[1], k, dtype=spec[2])
            if kind == "array":
                return np.full(spec[1], k, dtype=np.float32)
            return {"int": k, "float": k + 0.5, "str": f"s{k}"}[kind]
        return tuple(sample(v, k) for v in spec)
    return [sample(shape, k) for k in range(size)]


def assert_same(a, b):
    assert type(a) is type(b)
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_same(x, y)
    else:
        assert a == b


@PROPERTY
@given(batches())
def test_default_collate_matches_torch(batch):
    assert_same(fastload.default_collate(batch), torch.utils.data.default_collate(batch))


# --- PadCollator: padded to the longest, mask and lengths agree with the inputs ---

@PROPERTY
@given(st.lists(st.lists(st.integers(1, 1000), min_size=0, max_size=20), min_size=1, max_size=8),
       st.sampled_from(["right", "left"]), st.integers(-5, 5))
def test_pad_collator_pads_to_the_longest(sequences, side, pad):
    out = fastload.PadCollator(pad, padding_side=side)(sequences)
    longest = max(len(s) for s in sequences)
    assert out["input_ids"].shape == (len(sequences), longest)
    assert out["lengths"].tolist() == [len(s) for s in sequences]
    assert out["attention_mask"].sum(1).tolist() == [len(s) for s in sequences]
    for row, mask, seq in zip(out["input_ids"].tolist(), out["attention_mask"].tolist(), sequences):
        real = [v for v, m in zip(row, mask) if m]
        assert real == seq and all(v == pad for v, m in zip(row, mask) if not m)
        if side == "left" and len(seq) < longest:
            assert mask[0] == 0


@PROPERTY
@given(st.lists(hnp.arrays(np.float32, st.tuples(st.integers(0, 6), st.integers(1, 3)), elements=st.floats(-9, 9, width=32)),
                min_size=2, max_size=4))
def test_pad_collator_rejects_mismatched_trailing_dims_clearly(arrays):
    trailing = {a.shape[1] for a in arrays}
    if len(trailing) == 1:
        out = fastload.PadCollator()(arrays)
        assert out["input_ids"].shape[0] == len(arrays)
    else:
        with pytest.raises(ValueError, match="sample .* has shape"):
            fastload.PadCollator()(arrays)


# --- VoxelCollator: concatenation keeps every voxel and tags it with its sample ---

@st.composite
def voxel_samples(draw):
    samples = []
    for _ in range(draw(st.integers(1, 4))):
        m = draw(st.integers(0, 12))
        samples.append({
            "voxels": np.random.default_rng(m).random((m, 4, 3)).astype(np.float32),
            "coords": np.arange(3 * m, dtype=np.int32).reshape(m, 3),
            "num_points": np.full(m, 2, np.int32),
            "gt_boxes": np.zeros((draw(st.integers(0, 3)), 7), np.float32),
        })
    return samples


@PROPERTY
@given(voxel_samples(), st.sampled_from(["concat", "pad"]))
def test_voxel_collator_keeps_every_voxel(samples, mode):
    out = fastload.VoxelCollator(mode)(samples)
    total = sum(len(s["voxels"]) for s in samples)
    if mode == "concat":
        assert out["voxels"].shape == (total, 4, 3) and out["coords"].shape == (total, 4)
        assert out["coords"][:, 0].tolist() == [b for b, s in enumerate(samples) for _ in range(len(s["voxels"]))]
    else:
        assert out["voxel_mask"].sum().item() == total
    assert out["gt_boxes_mask"].sum().item() == sum(len(s["gt_boxes"]) for s in samples)


# --- the voxelizer: the reference rules on arbitrary points, clear errors on bad input ---

coordinates = st.one_of(st.floats(-3, 13, width=32), st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0, 10.0]))


@PROPERTY
@given(st.integers(0, 300), st.integers(3, 5), st.sampled_from([np.float32, np.float64]), st.data())
def test_voxelizer_matches_the_reference_on_arbitrary_points(n, channels, dtype, data):
    points = data.draw(hnp.arrays(dtype, (n, channels), elements=coordinates))
    voxel_size = data.draw(st.sampled_from([[0.5, 0.5, 0.5], [1.0, 0.25, 2.0], [0.3, 0.3, 10.0]]))
    pc_range = [0, 0, 0, 10, 10, 10]
    max_points, max_voxels = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 50))
    got = Voxelizer(voxel_size, pc_range, max_points, max_voxels)(points, return_point_voxel_id=True)
    want = ref.hard_voxelize(points, voxel_size, pc_range, max_points, max_voxels)
    for g, w in zip(got, want):
        assert g.shape == w.shape and np.array_equal(g, w, equal_nan=True)
    point_coords, voxel_coords, point_voxel = dynamic_voxelize(points, voxel_size, pc_range)
    want_dynamic = ref.dynamic_voxelize(points, voxel_size, pc_range)
    assert all(np.array_equal(g, w) for g, w in zip((point_coords, voxel_coords, point_voxel), want_dynamic))


@PROPERTY
@given(st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0), st.just(-1.0)),
                min_size=3, max_size=3))
def test_bad_voxel_sizes_are_clear_errors(voxel_size):
    try:
        voxelizer = Voxelizer(voxel_size, [0, 0, 0, 10, 10, 10], 4, 10)
    except ValueError as exc:  # names the first axis at fault (sizes are float32: 3.5e38 is inf)
        assert "voxel_size must be positive and finite; axis " in str(exc) or \
            "the grid must have between 1 and 2^31 - 1 cells per axis; axis " in str(exc) or \
            "the grid has more than 4e18 cells: its linear index would overflow" in str(exc)
    else:  # accepted: every size is positive, finite and small enough for a grid cell
        assert all(np.isfinite(v) and np.float32(v) > 0 for v in voxel_size)
        assert all(cells >= 1 for cells in voxelizer.grid_size)


# --- the readers: fuzzed and truncated files raise PointCloudError naming the file ---

PCD_HEADER = (b"# .PCD v0.7\nVERSION 0.7\nFIELDS x y z intensity\nSIZE 4 4 4 4\nTYPE F F F F\nCOUNT 1 1 1 1\n"
              b"WIDTH 10\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\nPOINTS 10\nDATA binary\n")


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from([".bin", ".pcd", ".ply"]), st.binary(max_size=400), st.booleans(), st.integers(0, 200))
def test_fuzzed_point_cloud_files_raise_clear_errors(tmp_path, suffix, noise, with_header, cut):
    whole = {".bin": np.zeros((10, 4), np.float32).tobytes(), ".pcd": PCD_HEADER + bytes(160),
             ".ply": b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nproperty float y\n"
                     b"property float z\nend_header\n" + bytes(120)}[suffix]
    content = (whole[:cut] + noise) if with_header else noise
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(content)
    try:
        cloud = read_point_cloud(path)
    except PointCloudError as exc:
        assert str(path) in str(exc)
    else:
        assert cloud.points.dtype == np.float32 and cloud.points.ndim == 2 and cloud.points.shape[1] >= 3


# --- the readers: a valid file of any layout reads back exactly ---

def column_values(draw, dtype, n: int) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":  # float32 values, so that an ascii float64 reads back as the same float32
        elements = st.floats(width=32, allow_nan=True, allow_infinity=True)
        return draw(hnp.arrays(np.float32, n, elements=elements)).astype(dtype)
    info = np.iinfo(dtype)
    return draw(hnp.arrays(dtype, n, elements=st.integers(int(info.min), int(info.max))))


def assert_reads_back(cloud, expected: dict[str, np.ndarray]) -> None:
    assert cloud.fields[:3] == ("x", "y", "z") and sorted(cloud.fields) == sorted(expected)
    assert cloud.points.dtype == np.float32 and cloud.points.shape == (len(expected["x"]), len(expected))
    for name, values in expected.items():
        np.testing.assert_array_equal(cloud.field(name), values.astype(np.float32))


PCD_DTYPES = [np.float32, np.float64, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64]
OPEN3D = importlib.util.find_spec("open3d") is not None


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 9), st.sampled_from([np.float32, np.float64]),
       st.lists(st.tuples(st.sampled_from(PCD_DTYPES), st.integers(1, 3)), max_size=4),
       st.sampled_from(["ascii", "binary", "binary_compressed"] if OPEN3D else ["ascii", "binary"]), st.data())
def test_pcd_of_any_layout_reads_back_exactly(tmp_path, n, xyz_dtype, extra, encoding, data):
    fields = [(axis, column_values(data.draw, xyz_dtype, n)) for axis in "xyz"]
    for k, (dtype, count) in enumerate(extra):
        values = np.stack([column_values(data.draw, dtype, n) for _ in range(count)], axis=1)
        fields.append((f"f{k}", values[:, 0] if count == 1 else values))
    fields = data.draw(st.permutations(fields))
    expected = {}
    for name, values in fields:
        expected.update({name: values} if values.ndim == 1 else
                        {f"{name}_{j}": values[:, j] for j in range(values.shape[1])})
    path = tmp_path / "layout.pcd"
    write_pcd(path, fields, encoding)
    try:
        cloud = read_point_cloud(path)
    except PointCloudError as exc:  # only a layout open3d would misread is refused
        assert encoding == "binary_compressed" and "cannot be read exactly" in str(exc) and \
            any(values.ndim == 2 for _, values in fields), exc
    else:
        assert_reads_back(cloud, expected)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(0, 9), st.lists(st.sampled_from(list(PLY_TYPE_NAMES)), min_size=3, max_size=7),
       st.sampled_from(["ascii", "binary_little_endian", "binary_big_endian"]),
       st.lists(st.lists(st.integers(0, 8), max_size=5), max_size=4), st.booleans(), st.data())
def test_ply_of_any_layout_reads_back_exactly(tmp_path, n, types, encoding, faces, faces_first, data):
    names = data.draw(st.permutations(["x", "y", "z"] + [f"p{k}" for k in range(len(types) - 3)]))
    vertex = {name: column_values(data.draw, np.dtype(code), n) for name, code in zip(names, types)}
    path = tmp_path / "layout.ply"
    write_ply(path, encoding, vertex, faces=faces, faces_first=faces_first)
    assert_reads_back(read_point_cloud(path), vertex)
