"""The CPU backend keeps large activation buffers in the C heap (glibc ``mallopt`` thresholds)."""
from __future__ import annotations

import resource

import pytest
import torch

from ember.backends.cpu import heap

MIB = 1 << 20

glibc_only = pytest.mark.skipif(heap._mallopt() is None, reason="needs glibc's mallopt")


def test_thresholds_never_below_glibc_ceilings() -> None:
    assert heap.thresholds(0, 0) == (heap.GLIBC_MMAP_CEILING, heap.GLIBC_TRIM_CEILING)
    mmap, trim = heap.thresholds(40 * MIB, 300 * MIB)
    assert mmap == 41 * MIB  # the largest tensor rounded up to a MiB, plus one
    assert trim == 600 * MIB  # room for twice the planned peak
    mmap, trim = heap.thresholds(10 << 30, 10 << 30)
    assert (mmap, trim) == (heap.MAX_MMAP_THRESHOLD, heap.MAX_TRIM_THRESHOLD)


def test_reserve_is_a_no_op_without_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(heap, "_mallopt", lambda: None)
    assert heap.reserve(64 * MIB, 64 * MIB) is False


@glibc_only
def test_reserve_only_raises(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[int, int]] = []

    def fake(param: int, value: int) -> int:
        calls.append((param, value))
        return 1

    monkeypatch.setattr(heap, "_mallopt", lambda: fake)
    monkeypatch.setattr(heap, "_applied", {"mmap": 0, "trim": 0})
    assert heap.reserve(50 * MIB, 100 * MIB)
    assert calls == [(heap.M_TRIM_THRESHOLD, 200 * MIB), (heap.M_MMAP_THRESHOLD, 51 * MIB)]
    calls.clear()
    assert heap.reserve(10 * MIB, 10 * MIB)  # smaller engine: nothing lowered
    assert calls == []
    assert heap.applied() == {"mmap": 51 * MIB, "trim": 200 * MIB}


@glibc_only
def test_large_buffers_are_reused_without_page_faults() -> None:
    """A 40 MiB tensor allocated and freed repeatedly: above glibc's default mmap ceiling it is
    mapped afresh (and faulted in) every time; after ``reserve`` it comes back from the heap."""
    numel = 40 * MIB // 4
    assert heap.reserve(40 * MIB, 80 * MIB)

    def faults_per_alloc(n: int = 5) -> float:
        for _ in range(8):  # warm: the heap grows over the first few
            torch.empty(numel).fill_(1.0)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        for _ in range(n):
            torch.empty(numel).fill_(1.0)
        return (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / n

    # 40 MiB in 4 KiB pages is 10240 faults per allocation when it is re-mapped each time; the
    # heap may take a few rounds to settle, so the best round counts
    assert min(faults_per_alloc() for _ in range(4)) < 100
