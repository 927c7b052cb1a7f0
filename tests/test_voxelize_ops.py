"""Voxelization on any device and as torch ops: the tensor-ops voxelizer (the CUDA
kernel) is bit-exact with the C++ one on the CPU, for every preset and the adversarial
sets; torch.ops.fastload.* work under torch.compile(fullgraph=True) and torch.export."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fastload.lidar import VOXELIZER_PRESETS, Voxelizer, dynamic_voxelize
from fastload.lidar import tensor_voxelize
from fastload.lidar.synthetic import make_scan

from .helpers import needs_cuda
from .test_voxelize import adversarial_points

CONFIGS = VOXELIZER_PRESETS
WIDE = ([0.001, 0.001, 0.001], [-60, -60, -5, 60, 60, 5], 4, 60000)  # a grid past 32-bit keys in the C++ one
HARD_NAMES = ("voxels", "coords", "num_points", "point_voxel_id")


@pytest.fixture(scope="module")
def scans():
    return [make_scan(seed) for seed in (0, 1)]


def inputs_for(config, scans):
    """The generated scans (shuffled, float64, 5 columns) and the adversarial sets."""
    voxel_size, pc_range = config[:2]
    rng = np.random.default_rng(0)
    five = np.concatenate([scans[1], rng.random((len(scans[1]), 1), dtype=np.float32)], axis=1)
    return [scans[0], scans[1], scans[0][rng.permutation(len(scans[0]))], scans[1].astype(np.float64), five,
            adversarial_points(voxel_size, pc_range, np.float32),
            adversarial_points(voxel_size, pc_range, np.float64)[::-1].copy(), scans[0][:0]]


def assert_identical(got, want, names):
    for name, g, w in zip(names, got, want, strict=True):
        w = torch.as_tensor(w)
        assert g.dtype == w.dtype and g.shape == w.shape, f"{name}: {g.dtype}{tuple(g.shape)} != {w.dtype}{tuple(w.shape)}"
        g = g.cpu()
        assert torch.equal(g.isnan(), w.isnan()) and torch.equal(g.nan_to_num(), w.nan_to_num()), f"{name} differs"


@pytest.mark.parametrize("config", [*CONFIGS, "wide"])
def test_tensor_voxelizer_is_bit_exact_with_the_cpp_one(scans, config):
    voxel_size, pc_range, max_points, max_voxels = WIDE if config == "wide" else CONFIGS[config]
    for points in inputs_for((voxel_size, pc_range), scans):
        for caps in ((max_points, max_voxels), (1, 5), (2, 40)):  # the preset's caps, and tight ones
            native = Voxelizer(voxel_size, pc_range, *caps)
            want = native(points, return_point_voxel_id=True)
            got = tensor_voxelize.hard_voxelize(torch.from_numpy(points), voxel_size, pc_range, native.grid_size, *caps)
            assert_identical(got, want, HARD_NAMES)
        want = dynamic_voxelize(points, voxel_size, pc_range)
        got = tensor_voxelize.dynamic_voxelize(torch.from_numpy(points), voxel_size, pc_range, native.grid_size)
        assert_identical(got, want, ("point_coords", "voxel_coords", "point_voxel"))


def test_the_ops_cpu_kernels_match_the_voxelizer(scans):
    voxel_size, pc_range, max_points, max_voxels = CONFIGS["second_kitti"]
    points = torch.from_numpy(scans[0])
    want = Voxelizer(voxel_size, pc_range, max_points, max_voxels)(scans[0], return_point_voxel_id=True)
    assert_identical(torch.ops.fastload.hard_voxelize(points, voxel_size, pc_range, max_points, max_voxels), want,
                     HARD_NAMES)
    assert_identical(torch.ops.fastload.dynamic_voxelize(points, voxel_size, pc_range),
                     dynamic_voxelize(scans[0], voxel_size, pc_range), ("point_coords", "voxel_coords", "point_voxel"))


def test_the_ops_pass_torch_library_opcheck(scans):
    voxel_size, pc_range, max_points, max_voxels = CONFIGS["pointpillars_kitti"]
    points = torch.from_numpy(scans[0][:5000].copy())
    for op, args in ((torch.ops.fastload.hard_voxelize.default, (points, voxel_size, pc_range, max_points, max_voxels)),
                     (torch.ops.fastload.dynamic_voxelize.default, (points, voxel_size, pc_range))):
        results = torch.library.opcheck(op, args)
        assert results and all(r == "SUCCESS" for r in results.values()), results


class VoxelizingModel(torch.nn.Module):
    """A pillar encoder's first step: voxelize inside forward, then mean the points of each voxel."""

    def __init__(self, config) -> None:
        super().__init__()
        self.voxelizer = Voxelizer(*config)
        self.voxel_size, self.pc_range = config[:2]

    def forward(self, points: torch.Tensor):
        voxels, coords, num_points = self.voxelizer(points)
        means = voxels.sum(dim=1) / num_points.clamp(min=1).unsqueeze(1).to(voxels.dtype)
        point_coords, voxel_coords, point_voxel = dynamic_voxelize(points, self.voxel_size, self.pc_range)
        return voxels, coords, num_points, point_coords, point_voxel, means, voxel_coords.shape[0]


EXACT = ("voxels", "coords", "num_points", "point_coords", "point_voxel")


def assert_same_outputs(got, want):
    """The voxelization's outputs bit for bit; the means (arithmetic the compiler may
    reorder) to rounding; the voxel count."""
    assert_identical(got[:5], [t.cpu() for t in want[:5]], EXACT)
    torch.testing.assert_close(got[5].cpu(), want[5].cpu())
    assert got[6] == want[6] > 1000


@pytest.mark.parametrize("config", list(CONFIGS))
def test_a_model_that_voxelizes_compiles_whole(scans, config):
    torch._dynamo.reset()
    model = VoxelizingModel(CONFIGS[config])
    compiled = torch.compile(model, fullgraph=True)
    for scan in scans:
        points = torch.from_numpy(scan)
        assert_same_outputs(compiled(points), model(points))


def test_a_model_that_voxelizes_exports_and_loads(scans, tmp_path):
    model = VoxelizingModel(CONFIGS["centerpoint_nuscenes"])
    points = torch.from_numpy(scans[0])
    exported = torch.export.export(model, (points,), dynamic_shapes={"points": {0: torch.export.Dim.DYNAMIC}})
    ops = {str(node.target) for node in exported.graph.nodes if node.op == "call_function"}
    assert {"fastload.hard_voxelize.default", "fastload.dynamic_voxelize.default"} <= ops
    path = tmp_path / "model.pt2"
    torch.export.save(exported, path)
    loaded = torch.export.load(path).module()
    other = torch.from_numpy(scans[1])  # a scan with another point and voxel count than the traced one
    assert len(other) != len(points)
    assert_same_outputs(loaded(other), model(other))


def test_bad_points_through_the_op_raise_the_cpp_voxelizers_errors():
    voxelizer = Voxelizer([0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 10)
    with pytest.raises(ValueError, match=r"shape \(N, C\) with C >= 3.*got \(4, 2\)"):
        torch.ops.fastload.hard_voxelize(torch.zeros(4, 2), [0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 10)
    with pytest.raises(TypeError, match="float32 or float64"):
        torch.ops.fastload.dynamic_voxelize(torch.zeros(4, 3, dtype=torch.int32), [0.1] * 3, [0, 0, 0, 1, 1, 1])
    with pytest.raises(ValueError, match="point_cloud_range must have 6 values"):
        torch.ops.fastload.hard_voxelize(torch.zeros(4, 3), [0.1] * 3, [0, 0, 0, 1, 1], 5, 10)
    with pytest.raises(ValueError, match=r"max_voxels must be below 2\^31, got 2147483648"):
        torch.ops.fastload.hard_voxelize(torch.zeros(4, 3), [0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 2**31)
    with pytest.raises(ValueError, match="max_voxels must be >= 1"):
        torch.ops.fastload.hard_voxelize(torch.zeros(4, 3), [0.1] * 3, [0, 0, 0, 1, 1, 1], 5, 0)
    with pytest.raises(TypeError, match="float32 or float64"):  # the same check on the path of other devices
        torch.ops.fastload.hard_voxelize(torch.zeros(4, 3, dtype=torch.float16, device="meta"), [0.1] * 3,
                                         [0, 0, 0, 1, 1, 1], 5, 10)
    assert voxelizer(torch.zeros(0, 3))[0].shape == (0, 5, 3)


@needs_cuda
@pytest.mark.parametrize("config", list(CONFIGS))
def test_on_cuda_tensors_the_voxelizer_is_bit_exact_with_the_cpu(scans, config):
    voxel_size, pc_range, max_points, max_voxels = CONFIGS[config]
    voxelizer = Voxelizer(voxel_size, pc_range, max_points, max_voxels)
    for points in inputs_for(CONFIGS[config], scans):
        gpu = torch.from_numpy(points).cuda()
        got = voxelizer(gpu, return_point_voxel_id=True)
        assert all(t.device.type == "cuda" for t in got)
        assert_identical(got, voxelizer(points, return_point_voxel_id=True), HARD_NAMES)
        assert_identical(dynamic_voxelize(gpu, voxel_size, pc_range), dynamic_voxelize(points, voxel_size, pc_range),
                         ("point_coords", "voxel_coords", "point_voxel"))


@needs_cuda
def test_a_model_that_voxelizes_compiles_whole_on_cuda(scans):
    model = VoxelizingModel(CONFIGS["pointpillars_kitti"])
    points = torch.from_numpy(scans[0]).cuda()
    assert_same_outputs(torch.compile(model, fullgraph=True)(points), model(points))


def test_the_gradient_of_the_voxels_flows_back_to_the_points_they_copy():
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(-1, 5, (300, 4))).requires_grad_()  # float64; some outside the range
    config = ([0.5, 0.5, 0.5], [0, 0, 0, 4, 4, 4], 3, 40)  # caps tight enough to drop points of full voxels
    voxelizer = Voxelizer(*config)
    voxels, coords, num_points, ids = voxelizer(points, return_point_voxel_id=True)
    assert voxels.requires_grad
    weights = torch.from_numpy(rng.normal(size=tuple(voxels.shape)))
    (voxels * weights).sum().backward()
    # Against the rule: the gradient of a copied point is its entry's weight, others zero.
    want = torch.zeros_like(points)
    counts: dict[int, int] = {}
    for i, v in enumerate(ids.tolist()):
        if v >= 0:
            row = counts.get(v, 0)
            counts[v] = row + 1
            if row < config[2]:
                want[i] = weights[v, row]
    assert torch.equal(points.grad, want) and want.abs().sum() > 0 and (want == 0).all(dim=1).sum() > 10
    assert torch.autograd.gradcheck(lambda p: torch.ops.fastload.hard_voxelize(p, *config)[0],
                                    (points.detach()[:60].clone().requires_grad_(),))
    points.grad = None  # compiled whole, with the gradient
    compiled = torch.compile(lambda p: (voxelizer(p)[0] * 2).sum(), fullgraph=True)
    compiled(points).backward()
    copied = (want != 0).any(dim=1, keepdim=True)
    assert torch.equal(points.grad, torch.where(copied, 2.0, 0.0).to(points.dtype).expand_as(points))
