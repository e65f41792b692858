"""Bounded thread stress on SimpleCache: no exception, no lost increment, threshold held."""

from __future__ import annotations

import random
import threading

from cacheplug import SimpleCache

THREADS = 8
OPS = 4_000


def test_mixed_workload_loses_no_increment() -> None:
    # 190 keys + 9 counters fit: LRU eviction must not be what loses a counter here.
    cache = SimpleCache(threshold=200, default_timeout=0)
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []
    expected = [0] * THREADS
    shared = [0] * THREADS
    sizes: list[int] = []

    def work(n: int) -> None:
        rng = random.Random(n)
        barrier.wait()
        try:
            for i in range(OPS):
                op = rng.randrange(6)
                key = f"k{rng.randrange(190)}"
                if op == 0:
                    cache.set(key, {"n": n, "i": i})
                elif op == 1:
                    value = cache.get(key)
                    # set writes {"n", "i"} dicts, add writes [n, i] lists: never anything else
                    assert value is None or (
                        set(value) == {"n", "i"} if isinstance(value, dict) else len(value) == 2
                    )
                elif op == 2:
                    cache.add(key, [n, i])
                elif op == 3:
                    cache.delete(key)
                elif op == 4:
                    cache.inc(f"counter:{n}")
                    expected[n] += 1
                else:
                    cache.inc("counter:shared", 2)
                    shared[n] += 2
                sizes.append(len(cache))
        except BaseException as err:
            errors.append(err)

    workers = [threading.Thread(target=work, args=(n,)) for n in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()

    assert errors == []
    assert max(sizes) <= 200
    for n in range(THREADS):
        assert cache.get(f"counter:{n}") == expected[n]
    assert cache.get("counter:shared") == sum(shared) > 0


def test_shared_counter_exact_under_contention() -> None:
    cache = SimpleCache(threshold=50)
    barrier = threading.Barrier(THREADS)

    def work() -> None:
        barrier.wait()
        for i in range(OPS):
            cache.inc("hot")
            cache.set(f"filler:{threading.get_ident()}:{i % 10}", i)
            cache.dec("cold", 1)

    workers = [threading.Thread(target=work) for _ in range(THREADS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert cache.get("hot") == THREADS * OPS
    assert cache.get("cold") == -THREADS * OPS
    assert len(cache) <= 50
