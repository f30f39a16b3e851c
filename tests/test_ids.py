"""Job ids: 96 random bits each behind a time stamp, increasing per source, unique across batches and threads."""

import threading
import time

from runner.ids import ID_BATCH, JobIds


def test_ids_carry_96_random_bits_after_a_millisecond_stamp_and_a_place():
    before = int(time.time() * 1000)
    source = JobIds()
    ids = [source.next() for _ in range(50)] + [JobIds().next() for _ in range(50)]
    assert all(len(job_id) == 39 and int(job_id, 16) >= 0 for job_id in ids)
    assert all(before <= int(job_id[:12], 16) <= time.time() * 1000 for job_id in ids)
    assert [int(job_id[12:15], 16) for job_id in ids[:50]] == list(range(50))
    # The random part differs everywhere, also between neighbours: no id says what the next is.
    assert len({job_id[15:21] for job_id in ids}) > 90


def test_one_sources_ids_increase_across_refills():
    source = JobIds()
    ids = [source.next() for _ in range(ID_BATCH + 10)]
    assert ids == sorted(ids), "increasing ids keep the journal's index growing at its end"


def test_ids_stay_unique_across_refills_and_threads():
    source, seen, lock = JobIds(), [], threading.Lock()

    def draw() -> None:
        mine = [source.next() for _ in range(ID_BATCH + 10)]
        with lock:
            seen.extend(mine)

    threads = [threading.Thread(target=draw) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(seen) == len(set(seen)) == 4 * (ID_BATCH + 10)
