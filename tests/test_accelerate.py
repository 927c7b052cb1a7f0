"""fastload loaders prepared by Hugging Face Accelerate (``use_fastload``): two real
processes under torchrun (gloo, CPU), and single-process checks of the gradient state."""

from __future__ import annotations

import inspect
import json

import pytest
import torch
import torch.utils.data as tud

import fastload

accelerate = pytest.importorskip("accelerate")

from fastload.integrations.accelerate import AcceleratedDataLoader, use_fastload  # noqa: E402

from .helpers import run_distributed  # noqa: E402
N, BAD, BATCH, WORLD = 45, 7, 4, 2


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("accelerate")
    run_distributed("accelerate_run.py", str(out), processes=WORLD)
    return [json.loads((out / f"rank{r}.json").read_text()) for r in range(WORLD)]


def flat(batches):
    return [i for b in batches for i in b]


def test_prepare_keeps_a_fastload_loader_with_its_options(ranks):
    for r in ranks:
        assert r["world"] == WORLD
        assert r["type"] == "AcceleratedDataLoader" and r["is_fastload"]
        assert r["on_error"] == "skip" and r["device"].startswith("cpu")
        assert r["stats_batches"] == len(r["epoch0"])  # telemetry=True kept


def test_batches_come_from_fastload_worker_processes(ranks):
    for r in ranks:
        assert len(r["worker_pids"]) == 2 and r["main_pid"] not in r["worker_pids"]
        assert set(r["batch_pids"]) <= set(r["worker_pids"])


def test_ranks_get_disjoint_shards_of_equal_length_covering_the_dataset(ranks):
    for epoch in ("epoch0", "epoch1", "epoch2"):
        per_rank = [flat(r[epoch]) for r in ranks]
        assert len(ranks[0][epoch]) == len(ranks[1][epoch]) == ranks[0]["len"] == -(-N // (BATCH * WORLD))
        assert set(per_rank[0]) | set(per_rank[1]) == set(range(N)) - {BAD}
        padding = ranks[0]["len"] * BATCH * WORLD - N
        assert len(per_rank[0]) + len(per_rank[1]) - len(set(per_rank[0]) | set(per_rank[1])) <= padding + 1
    assert ranks[0]["epoch0"] != ranks[0]["epoch1"]  # the epoch changes the order


def test_on_error_skip_is_kept(ranks):
    assert [BAD] in [r["errors"] for r in ranks]


def test_end_of_dataloader_is_set_at_the_last_batch_only(ranks):
    for r in ranks:
        assert r["ends"] == [False] * (len(r["ends"]) - 1) + [True]


def test_load_state_resumes_with_exactly_the_batches_not_yet_delivered(ranks):
    for r in ranks:
        assert r["resumed_tail"] == r["epoch1_tail"] and len(r["epoch1_tail"]) == len(r["epoch1"]) - 3


def test_a_resumed_loader_goes_on_as_the_uninterrupted_one(ranks):
    for r in ranks:
        assert r["resumed_next_epoch"] == r["epoch2"]


def test_skip_first_batches_returns_the_fastload_loader_positioned(ranks):
    for r in ranks:
        assert r["skip_is_fastload"] and r["skipped_tail"] == r["epoch1_tail"]


def test_gather_for_metrics_gives_every_sample_once(ranks):
    for r in ranks:
        assert r["gathered"] == [i for i in range(N) if i != BAD]


def test_a_users_batch_sampler_and_no_batching_give_one_shape_a_step_and_gather_exactly(ranks):
    for r in ranks:
        assert r["own_batches_gathered"] == list(range(10))
        assert r["unbatched_shapes"] == [[]] and r["unbatched_gathered"] == list(range(5))


def test_a_position_before_prepare_is_refused_with_the_order_that_works(ranks):
    for r in ranks:
        assert "positioned inside its epoch" in r["positioned_error"] and "prepare it first" in r["positioned_error"]


def test_split_batches_splits_a_batch_size_and_refuses_a_batch_sampler(ranks):
    for r in ranks:
        assert r["split_batch_size"] == [2, 2, 2]
        assert "split_batches=True splits batches of a batch_size" in r["split_error"]
        assert "this loader has its BatchSampler instead" in r["split_error"]


def test_an_iterable_dataset_is_split_across_processes(ranks):
    per_rank = [flat(r["stream_epoch"]) for r in ranks]
    assert len(ranks[0]["stream_epoch"]) == len(ranks[1]["stream_epoch"])
    assert set(per_rank[0]) | set(per_rank[1]) == set(range(N))
    assert len(per_rank[0]) + len(per_rank[1]) - N <= 2 * BATCH * WORLD  # each worker's last step is completed


def test_an_iterable_dataset_resumes_from_save_state(ranks):
    for r in ranks:
        assert r["stream_head"] + r["stream_tail"] == r["stream_epoch"]
        assert r["stream_resumed_tail"] == r["stream_tail"]


# Single process: what Accelerate sees of the epoch.


@pytest.fixture
def accelerator():
    from accelerate.state import AcceleratorState, GradientState

    yield use_fastload(accelerate.Accelerator(cpu=True))
    AcceleratorState._reset_state(True)
    GradientState._reset_state()


class Failing(tud.Dataset):
    def __len__(self) -> int:
        return 15

    def __getitem__(self, i: int) -> int:
        if i == 9:
            raise ValueError("sample 9 is corrupt")
        return i


def test_use_fastload_twice_changes_nothing(accelerator):
    prepare = accelerator.prepare_data_loader
    assert use_fastload(accelerator) is accelerator and accelerator.prepare_data_loader == prepare


def test_a_single_process_loader_keeps_its_sampler_and_order(accelerator):
    def make() -> fastload.DataLoader:
        return fastload.DataLoader(tud.TensorDataset(torch.arange(12)), batch_size=3, shuffle=True,
                                   generator=torch.Generator().manual_seed(3))

    loader = make()
    sampler = loader.sampler
    prepared = accelerator.prepare(loader)
    assert isinstance(prepared, AcceleratedDataLoader) and prepared.sampler is sampler
    assert prepared.total_batch_size == 3 and len(prepared) == 4
    assert [b[0].tolist() for b in prepared] == [b[0].tolist() for b in make()]


def double(batch):
    return batch * 2


def test_every_fastload_option_and_torch_argument_survives_prepare(accelerator):
    options = dict(seed_per_sample=True, device=torch.device("cpu"), device_prefetch=3, batch_transform=double,
                   min_slot_bytes=1 << 21, on_error="replace", max_errors=5, max_worker_restarts=2, telemetry=True,
                   sample_root=7)
    torch_arguments = set(inspect.signature(tud.DataLoader).parameters)
    extras = {name for name in inspect.signature(fastload.DataLoader).parameters} - torch_arguments
    assert extras == set(options)  # a new option must be kept by prepare too
    kept = dict(num_workers=1, persistent_workers=True, prefetch_factor=3, in_order=False, timeout=30.0,
                worker_init_fn=double, multiprocessing_context="spawn")
    loader = fastload.DataLoader(tud.TensorDataset(torch.arange(8)), batch_size=2, collate_fn=fastload.PadCollator(),
                                 **kept, **options)
    prepared = accelerator.prepare(loader)
    for name, value in {**options, **kept}.items():
        assert getattr(prepared, name) == value or name == "multiprocessing_context", name
    assert prepared.multiprocessing_context.get_start_method() == "spawn"
    assert prepared.collate_fn is loader.collate_fn


def test_a_position_or_epoch_given_before_prepare_is_kept(accelerator):
    def make():
        return fastload.DataLoader(tud.TensorDataset(torch.arange(12)), batch_size=2, shuffle=True,
                                   generator=torch.Generator().manual_seed(1))
    original = make()
    iterator = iter(original)
    next(iterator), next(iterator)
    state = original.state_dict()
    rest = [b[0].tolist() for b in iterator]
    resumed = make()
    resumed.load_state_dict(state)  # before prepare, as the order of calls may be
    prepared = accelerator.prepare(resumed)
    assert [b[0].tolist() for b in prepared] == rest
    later = make()
    later.set_epoch(3)
    assert accelerator.prepare(later).state_dict()["epoch"] == 3


def test_a_batch_that_fails_ahead_comes_after_the_batch_before_it(accelerator):
    prepared = accelerator.prepare(fastload.DataLoader(Failing(), batch_size=3))
    iterator = iter(prepared)
    assert next(iterator).tolist() == [0, 1, 2]
    assert next(iterator).tolist() == [3, 4, 5]  # batch [6, 7, 8] was looked ahead for
    assert next(iterator).tolist() == [6, 7, 8]  # its look-ahead met the failing batch: still delivered
    assert accelerator.gradient_state.in_dataloader and not accelerator.gradient_state.end_of_dataloader
    with pytest.raises(ValueError, match="sample 9 is corrupt"):
        next(iterator)
    assert prepared.state_dict()["batches"] == 3
    assert next(iterator).tolist() == [12, 13, 14]  # the epoch goes on after the failed batch, as torch's does
    assert accelerator.gradient_state.end_of_dataloader
    with pytest.raises(StopIteration):
        next(iterator)
    assert not accelerator.gradient_state.in_dataloader


def test_the_batch_held_ahead_is_not_in_the_state(accelerator):
    prepared = accelerator.prepare(fastload.DataLoader(tud.TensorDataset(torch.arange(10)), batch_size=2))
    iterator = iter(prepared)
    next(iterator)
    state = prepared.state_dict()
    assert state["batches"] == 1 and state["settled"]["prefix"] == 2
    resumed = accelerator.prepare(fastload.DataLoader(tud.TensorDataset(torch.arange(10)), batch_size=2))
    resumed.load_state_dict(state)
    assert [b[0].tolist() for b in resumed] == [[2, 3], [4, 5], [6, 7], [8, 9]]


def test_remainder_is_the_last_batch_size(accelerator):
    prepared = accelerator.prepare(fastload.DataLoader(tud.TensorDataset(torch.arange(10)), batch_size=4))
    remainders = [accelerator.gradient_state.remainder for _ in prepared]
    assert remainders == [2, 2, 2]


def test_a_stateful_dataloader_configuration_keeps_fastload_loaders_too():
    from accelerate.state import AcceleratorState, GradientState
    from accelerate.utils import DataLoaderConfiguration

    try:
        stateful = use_fastload(accelerate.Accelerator(
            cpu=True, dataloader_config=DataLoaderConfiguration(use_stateful_dataloader=True)))
        prepared = stateful.prepare(fastload.DataLoader(tud.TensorDataset(torch.arange(10)), batch_size=4))
        assert isinstance(prepared, AcceleratedDataLoader) and not getattr(prepared, "use_stateful_dataloader", False)
    finally:
        AcceleratorState._reset_state(True)
        GradientState._reset_state()


def test_torch_loaders_are_still_prepared_by_accelerate(accelerator):
    prepared = accelerator.prepare(tud.DataLoader(tud.TensorDataset(torch.arange(10)), batch_size=4))
    assert not isinstance(prepared, fastload.DataLoader)
    assert [b[0].tolist() for b in prepared][0] == [0, 1, 2, 3]


def test_a_subclass_of_fastload_dataloader_is_refused_by_name(accelerator):
    class Mine(fastload.DataLoader):
        pass

    with pytest.raises(TypeError, match="Mine subclasses fastload.DataLoader"):
        accelerator.prepare(Mine(tud.TensorDataset(torch.arange(4))))
