"""The export stage's peak-memory probe: kernel high-water mark, no sampling thread beside the timed runs."""

from __future__ import annotations

import threading

import numpy as np

from tasks.export import _PeakRss


def test_peak_memory_sees_a_freed_allocation_without_a_thread():
    threads = threading.active_count()
    with _PeakRss() as rss:
        assert threading.active_count() == threads  # nothing wakes up during the timed runs
        block = np.ones(200 * 2**20, dtype=np.uint8)  # 200 MiB, touched
        del block
    assert 190 <= rss.delta_mb <= 260


def test_peak_memory_of_nothing_is_small():
    with _PeakRss() as rss:
        pass
    assert 0 <= rss.delta_mb < 20
