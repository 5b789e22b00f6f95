import itertools

import pytest

from semiseg_lit.data.samplers import InfiniteStreamSampler, ShardSampler, sample_seed


def take(sampler, n):
    return list(itertools.islice(iter(sampler), n))


def test_stream_is_infinite_and_each_pass_is_a_permutation():
    items = [i for i, _ in take(InfiniteStreamSampler(5, seed=0, stream_id=1), 15)]
    for p in range(3):
        assert sorted(items[5 * p:5 * p + 5]) == [0, 1, 2, 3, 4]
    # reshuffled between passes (with 5! orders, three equal passes would be a bug)
    assert not (items[0:5] == items[5:10] == items[10:15])


def test_stream_is_a_pure_function_of_position_for_resume():
    full = take(InfiniteStreamSampler(7, seed=3, stream_id=2), 20)
    resumed = take(InfiniteStreamSampler(7, seed=3, stream_id=2, start=8), 12)
    assert resumed == full[8:]


def test_streams_and_seeds_differ():
    a = take(InfiniteStreamSampler(50, seed=0, stream_id=1), 50)
    b = take(InfiniteStreamSampler(50, seed=0, stream_id=2), 50)
    c = take(InfiniteStreamSampler(50, seed=1, stream_id=1), 50)
    assert a != b and a != c
    assert len({s for _, s in a}) == 50  # per-sample seeds are distinct


def test_ranks_get_disjoint_interleaved_shards_of_the_global_order():
    glob = take(InfiniteStreamSampler(8, seed=0, stream_id=1), 16)
    r0 = take(InfiniteStreamSampler(8, seed=0, stream_id=1, rank=0, world_size=2), 8)
    r1 = take(InfiniteStreamSampler(8, seed=0, stream_id=1, rank=1, world_size=2), 8)
    assert r0 == glob[0::2] and r1 == glob[1::2]


def test_bad_arguments():
    with pytest.raises(ValueError, match="empty dataset"):
        InfiniteStreamSampler(0, seed=0, stream_id=1)
    with pytest.raises(ValueError, match="rank 2"):
        InfiniteStreamSampler(3, seed=0, stream_id=1, rank=2, world_size=2)


def test_shard_sampler_covers_each_item_exactly_once():
    shards = [list(ShardSampler(7, r, 3)) for r in range(3)]
    assert sorted(sum(shards, [])) == list(range(7))
    assert shards[0] == [0, 3, 6]


def test_sample_seed_is_stable():
    assert sample_seed(0, 1, 5) == sample_seed(0, 1, 5)
    assert sample_seed(0, 1, 5) != sample_seed(0, 1, 6)
    assert 0 <= sample_seed(2**40, 3, 2**40) < 2**31


def test_virtual_rank_batches_do_not_depend_on_the_device_layout():
    # 4 emulated GPUs with 2 items each per step: on 1 device (4 groups), 2 devices (2 groups) or 4 devices,
    # virtual rank v gets the same items (and sample seeds) at every step
    def device_batches(rank, world, steps=3):
        groups = 4 // world
        s = InfiniteStreamSampler(10, seed=5, stream_id=1, rank=rank, world_size=world, groups=groups, group_batch=2)
        items = list(itertools.islice(iter(s), steps * groups * 2))
        return [items[k * groups * 2:(k + 1) * groups * 2] for k in range(steps)]

    for step in range(3):
        one = device_batches(0, 1)[step]
        two = device_batches(0, 2)[step] + device_batches(1, 2)[step]
        four = [item for r in range(4) for item in device_batches(r, 4)[step]]
        assert one == two == four
    # hand check of the layout: step 0 of virtual rank 1 = global positions 1 and 5 (items j=0, 1; V=4)
    s = InfiniteStreamSampler(10, seed=5, stream_id=1, groups=4, group_batch=2)
    plain = list(itertools.islice(iter(InfiniteStreamSampler(10, seed=5, stream_id=1)), 8))
    assert list(itertools.islice(iter(s), 8))[2:4] == [plain[1], plain[5]]
