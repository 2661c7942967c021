"""The CUDA context's arena plan (CPU-side logic): stream-aware lifetimes, views kept alive by
their readers, outputs kept to the end, and no two tensors that may be in use at the same time
sharing a byte, on random multi-stream schedules."""
from __future__ import annotations

import random

import pytest
import torch

from ember.backends.cuda.exec.arena import Trace, ViewSpec, happens_before, plan_arena, release_step
from ember.backends.layout import dense
from ember.plan.memory import check_no_overlap


def _record(producers: dict[str, int], readers: dict[str, set[int]], nbytes: int = 1000,
            base: dict[str, str] | None = None) -> Trace:
    rec = Trace()
    for name, p in producers.items():
        rec.producer[name] = p
        rec.specs[name] = ViewSpec((nbytes // 4,), (1,), torch.float32)
    rec.readers = {k: set(v) for k, v in readers.items()}
    rec.base = dict(base or {})
    return rec


def test_happens_before_follows_streams_and_waits():
    # 0 on s0; 1 on s1 (waits for 0); 2 on s0; 3 on s0 waits for 1
    before = happens_before([0, 1, 0, 0], [(), (0,), (), (1,)], [True] * 4)
    assert before[1] == 0b1
    assert before[2] == 0b1          # step 1 runs concurrently with step 2
    assert before[3] == 0b111


def test_release_waits_for_a_reader_on_another_stream():
    before = happens_before([0, 1, 0, 0], [(), (0,), (), (1,)], [True] * 4)
    # written by 0, read by 1 (side stream): step 2 does not wait for 1, so not released before 2
    assert release_step(0b11, 0, before, [True] * 4) == 2
    # read only by step 0's own stream successor: released after it
    before_seq = happens_before([0, 0, 0], [(), (), ()], [True] * 3)
    assert release_step(0b11, 0, before_seq, [True] * 3) == 1


def test_parallel_branches_never_share_bytes_sequential_ones_do():
    # a (step 0, s0) read by 1 (s1); b written at step 2 (s0) concurrently with 1
    streams, waits = [0, 1, 0, 0], [(), (0,), (), (1,)]
    rec = _record({"a": 0, "c": 1, "b": 2, "d": 3}, {"a": {1}, "c": {3}, "b": {3}})
    plan = plan_arena(rec, streams, waits, [True] * 4, keep=["d"])
    t = plan.memory.tensors
    assert t["a"].offset != t["b"].offset  # index order alone ([0, 1] vs [2, 3]) would share
    check_no_overlap(plan.memory)
    seq = plan_arena(_record({"a": 0, "c": 1, "b": 2}, {"a": {1}, "c": {2}}), [0, 0, 0], [(), (), ()],
                     [True] * 3, keep=["b"])
    assert seq.memory.tensors["a"].offset == seq.memory.tensors["b"].offset  # reused in place
    assert seq.arena_bytes < seq.memory.sum_bytes


def test_a_view_keeps_its_base_alive_and_outputs_live_to_the_end():
    # a (0) viewed as v (step 1, a Reshape); v read at step 3; b written at 2
    rec = _record({"a": 0, "b": 2, "c": 3}, {"a": {1}, "v": {3}, "b": {3}}, base={"v": "a"})
    plan = plan_arena(rec, [0] * 4, [()] * 4, [True] * 4, keep=["c"])
    t = plan.memory.tensors
    assert t["a"].last >= 3 and t["a"].offset != t["b"].offset
    assert t["c"].last == 4 and "v" not in t and plan.views_of == {"v": "a"}
    plan2 = plan_arena(_record({"a": 0, "b": 1}, {"a": {1}}, base={"out": "a"}), [0, 0], [(), ()],
                       [True, True], keep=["out", "b"])
    assert plan2.memory.tensors["a"].last == 2  # an output that is a view keeps its base


@pytest.mark.parametrize("seed", range(30))
def test_random_schedules_never_overlap_tensors_in_use_together(seed):
    rnd = random.Random(seed)
    n, nstreams = rnd.randint(4, 40), rnd.randint(1, 4)
    streams = [rnd.randrange(nstreams) for _ in range(n)]
    waits = [tuple(sorted(rnd.sample(range(i), k=min(i, rnd.randint(0, 2))))) for i in range(n)]
    device = [rnd.random() > 0.05 for _ in range(n)]
    producers = {f"t{i}": i for i in range(n) if device[i]}
    readers: dict[str, set[int]] = {}
    for name, p in producers.items():  # readers come later and wait for the producer (data dependence)
        for r in rnd.sample(range(p + 1, n), k=min(n - p - 1, rnd.randint(0, 3))):
            if device[r]:
                readers.setdefault(name, set()).add(r)
                waits[r] = tuple(sorted(set(waits[r]) | {p}))
    rec = Trace()
    for name, p in producers.items():
        size = rnd.choice([0, 4, 64, 100, 4096])
        rec.producer[name] = p
        rec.specs[name] = ViewSpec((size // 4,), (1,), torch.float32)
    rec.readers = readers
    plan = plan_arena(rec, streams, waits, device, keep=[])
    check_no_overlap(plan.memory)
    before = happens_before(streams, waits, device)
    placed = [(k, a) for k, a in plan.memory.tensors.items() if a.size]
    for i, (ka, a) in enumerate(placed):
        for kb, b in placed[i + 1:]:
            if a.offset < b.offset + b.size and b.offset < a.offset + a.size:
                first, second = (ka, kb) if rec.producer[ka] < rec.producer[kb] else (kb, ka)
                users = {rec.producer[first]} | readers.get(first, set())
                q = rec.producer[second]
                assert all(before[q] >> u & 1 for u in users), (first, second)


def test_dense_tells_packed_tensors_from_broadcasts_and_slices():
    x = torch.empty(2, 3, 4, 5)
    assert dense(x) and dense(x.permute(0, 2, 3, 1)) and dense(x.contiguous(memory_format=torch.channels_last))
    assert not dense(torch.empty(3, 1).expand(3, 4)) and not dense(x[:, :2])
    assert dense(torch.empty(0)) and dense(torch.empty(1, 1))


def test_views_lay_tensors_at_their_offsets():
    rec = _record({"a": 0, "b": 1}, {"a": {1}}, nbytes=256)
    plan = plan_arena(rec, [0, 0], [(), ()], [True, True], keep=["b"])
    arena = torch.zeros(plan.arena_bytes, dtype=torch.uint8)
    views = plan.views(arena)
    views["b"].fill_(1.0)
    off = plan.memory.tensors["b"].offset
    assert torch.equal(arena[off:off + 256].view(torch.float32), torch.ones(64))
    with pytest.raises(ValueError, match="smaller"):
        plan.views(torch.zeros(plan.arena_bytes - 1, dtype=torch.uint8))
