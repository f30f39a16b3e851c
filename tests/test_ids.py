"""Job ids: 128 random bits each, no shared prefix, unique across batches and threads."""

import threading

from runner.ids import ID_BATCH, JobIds


def test_ids_are_128_bit_hex_without_a_shared_prefix():
    ids = [JobIds().next() for _ in range(50)] + [JobIds().next() for _ in range(50)]
    assert all(len(job_id) == 32 and int(job_id, 16) >= 0 for job_id in ids)
    assert len({job_id[:6] for job_id in ids}) > 90  # random from the first digit, not prefix + counter


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
