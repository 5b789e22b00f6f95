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
