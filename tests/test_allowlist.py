"""What a worker runs, with real processes: --import, --allow-module globs, and what no glob admits."""

import pytest

import runner
from cluster import environment


@pytest.fixture
def guarded(processes, broker_address, client_factory, tmp_path):
    """A worker with --allow-module '*' and both pools; returns (client, marker file of import_marker)."""
    marker = tmp_path / "imported"
    processes.runner("worker", "--connect", broker_address, "--import", "admission_targets", "--import", "math",
                     "--allow-module", "*", "--allow-module", "nothing.*", "--processes", "1", "--threads", "1",
                     "--log-level", "WARNING", env=environment(RUNNER_TEST_IMPORT_MARKER=str(marker)))
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    return client, marker


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_dangerous_functions_are_refused_even_with_allow_module_star(guarded, pool, tmp_path):
    client, _ = guarded
    touched = tmp_path / "touched"
    for reference, args in [("os:system", [f"touch {touched}"]), ("subprocess:run", [["touch", str(touched)]]),
                            ("builtins:eval", [f"open({str(touched)!r}, 'w')"])]:
        with pytest.raises(runner.TaskNotAllowedError) as caught:
            client.submit(reference, *args, pool=pool).result(timeout=30)
        module = reference.partition(":")[0]
        assert f"module {module!r}" in caught.value.message and f"--import {module}" in caught.value.message
    assert not touched.exists(), "a refused task ran"


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_a_module_named_with_import_runs_and_a_glob_admits_user_modules(guarded, pool):
    client, marker = guarded
    assert client.submit("math:sqrt", 16, pool=pool).result(timeout=30) == 4.0
    assert client.submit("admission_targets:Tools.double", 21, pool=pool).result(timeout=30) == 42
    assert client.submit("import_marker:hello", pool=pool).result(timeout=30) == "imported"  # by the glob '*'
    assert marker.exists()


@pytest.mark.parametrize("pool", ["process", "thread"])
def test_private_non_callable_and_borrowed_targets_are_refused_naming_them(guarded, pool):
    client, _ = guarded
    for target, why in [("_helper", "private"), ("CONSTANT", "names a int, not a function"),
                        ("os.system", "goes through a module"), ("run", "defined in 'subprocess'")]:
        reference = f"admission_targets:{target}"
        with pytest.raises(runner.TaskNotAllowedError) as caught:
            client.submit(reference, pool=pool).result(timeout=30)
        assert repr(reference) in caught.value.message and why in caught.value.message
    assert client.submit("admission_targets:public", pool=pool).result(timeout=30) == "ran"


def test_a_module_no_rule_admits_is_never_imported(processes, broker_address, client_factory, tmp_path):
    marker = tmp_path / "imported"
    processes.runner("worker", "--connect", broker_address, "--import", "tasks", "--allow-module", "other.*",
                     "--processes", "1", "--threads", "1", "--log-level", "WARNING",
                     env=environment(RUNNER_TEST_IMPORT_MARKER=str(marker)))
    client = client_factory(broker_address)
    client.wait_for_workers(1, timeout=30)
    for pool in ("process", "thread"):
        with pytest.raises(runner.TaskNotAllowedError, match="'import_marker' was not given with --import"):
            client.submit("import_marker:hello", pool=pool).result(timeout=30)
    assert client.submit("tasks:add", 1, 2).result(timeout=30) == 3  # the worker's pools ran, and serve
    assert not marker.exists(), "the worker imported a module no rule admits"
