"""The admission rules (workers/admission.py): which task references a worker may run, without a worker."""

import math
import subprocess
import sys
import types

import pytest

from workers.admission import Admission

sys.path.insert(0, __import__("os").path.dirname(__file__))
import admission_targets  # noqa: E402


def refused(admission: Admission, reference: str) -> str:
    reason = admission.refusal(reference)
    assert reason is not None, f"{reference} was admitted"
    return reason


@pytest.mark.parametrize("reference", ["os:system", "subprocess:run", "builtins:eval", "importlib:import_module",
                                       "pickle:loads", "marshal:loads", "shutil:rmtree", "sys:exit", "ctypes:CDLL",
                                       "socket:socket", "code:interact", "pty:spawn", "runpy:run_path",
                                       "multiprocessing:Process", "os.path:join", "timeit:timeit",
                                       "runner.local:stop_process", "workers.execute:configure", "dill:loads",
                                       "yaml:load", "setuptools:setup"])
def test_no_glob_admits_the_standard_library_or_dangerous_packages(reference):
    module = reference.partition(":")[0]
    reason = refused(Admission(globs=["*"]), reference)
    assert repr(module) in reason and f"--import {module}" in reason


def test_naming_a_module_with_import_admits_it_even_from_the_standard_library():
    admission = Admission(imports=["math", "tasks"], globs=["*"])
    assert admission.refusal("math:sqrt") is None
    assert admission.refusal("tasks:add") is None
    assert "--import cmath" in refused(admission, "cmath:sqrt")


def test_globs_admit_what_they_match_and_nothing_else():
    admission = Admission(imports=["tasks"], globs=["myapp.*", "reports"])
    assert admission.refusal("myapp.jobs:run") is None
    assert admission.refusal("reports:daily") is None
    reason = refused(admission, "other:f")
    assert "'other'" in reason and "--import other" in reason and "glob 'myapp.*'" in reason
    assert "private" in refused(admission, "myapp._impl:run")  # private modules only by --import
    assert Admission(imports=["myapp._impl"]).refusal("myapp._impl:run") is None


@pytest.mark.parametrize("reference", ["tasks:_helper", "tasks:__init__", "tasks:Tool.__call__", "tasks:x._y",
                                       "tasks:", "tasks:a b", ":f", "..up:f", "tasks:a..b"])
def test_private_dunder_and_malformed_names_are_refused_naming_the_target(reference):
    assert repr(reference) in refused(Admission(imports=["tasks"], globs=["*"]), reference)


def test_the_target_must_be_a_callable_reached_through_classes_and_defined_where_admitted():
    admission = Admission(imports=["admission_targets"])
    reference = "admission_targets:{}".format
    assert admission.target_refusal(reference("public"), [admission_targets.public]) is None
    assert admission.target_refusal(reference("Tools.double"),
                                    [admission_targets.Tools, admission_targets.Tools.double]) is None
    assert "not a function" in admission.target_refusal(reference("CONSTANT"), [42])
    assert "not a function" in admission.target_refusal(reference("os"), [admission_targets.os])
    assert "goes through a module" in admission.target_refusal(reference("os.system"),
                                                               [admission_targets.os, admission_targets.os.system])
    reason = admission.target_refusal(reference("run"), [subprocess.run])
    assert "defined in 'subprocess'" in reason and "--import subprocess" in reason
    # Defined in a submodule of the named module, or in another admitted module: allowed.
    assert admission.target_refusal("math:sqrt", [math.sqrt]) is None
    inner = types.FunctionType((lambda: 1).__code__, {})
    inner.__module__ = "admission_targets.inner"
    assert admission.target_refusal(reference("inner"), [inner]) is None
    inner.__module__ = "elsewhere"
    assert "'elsewhere'" in admission.target_refusal(reference("inner"), [inner])
    assert Admission(imports=["admission_targets"], globs=["else*"]).target_refusal(reference("inner"), [inner]) is None


def test_refusals_are_cached_per_reference_and_bounded(monkeypatch):
    from workers import admission as module

    monkeypatch.setattr(module, "CACHE_LIMIT", 3)
    admission = Admission(imports=["tasks"])
    first = admission.refusal("other:f")
    assert admission.refusal("other:f") is first
    for index in range(10):
        admission.refusal(f"other{index}:f")
    assert len(admission._refusals) == 3


def test_bad_flags_fail_at_start_naming_the_value():
    with pytest.raises(ValueError, match="'not a module'"):
        Admission(imports=["not a module"])
    with pytest.raises(ValueError, match="--allow-module ''"):
        Admission(globs=[""])
