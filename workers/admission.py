"""What a worker may run: the admission rules for task references, apart from importing.

A job names its function as ``module:qualname``. The worker runs it only if:

- the module was named with ``--import`` (always admitted, whatever it is), or it
  matches an ``--allow-module`` glob and is none of what a glob never admits: the
  standard library (``sys.stdlib_module_names``), the curated DANGEROUS packages
  (code, processes, files, pickles, installers, runner itself), and modules with a
  private part (``pkg._impl``);
- no part of the qualname is private or dunder (``_helper``, ``__init__``);
- and, once the admitted module is imported, the path from it goes through classes
  only, ends at a callable, and everything on it is defined in the named module (or
  a submodule of it) or in another admitted module: ``tasks:run`` where ``tasks``
  did ``from subprocess import run`` is refused, as is ``tasks:os.system``.

The module part is decided before anything is imported, so a refused module is
never imported. Decisions are plain functions of names and objects (no I/O);
refusals are cached per reference, so a repeated job costs one dict lookup.
"""

from __future__ import annotations

import fnmatch
import re
import sys
from types import ModuleType
from typing import Iterable, Sequence

#: Top-level modules no glob admits: the standard library, plus the interpreter's entry names.
STDLIB = frozenset(sys.stdlib_module_names) | {"__main__", "__future__"}
#: Top-level packages outside the standard library that no glob admits: they run code or
#: processes, unpickle, touch files or the network, install packages, or steer runner itself.
DANGEROUS = frozenset({
    "runner", "workers",  # workers.execute:configure would rewrite these very rules
    "pip", "setuptools", "pkg_resources", "wheel", "distutils", "virtualenv",
    "dill", "cloudpickle", "joblib", "jsonpickle", "yaml", "ruamel", "pandas",
    "sh", "plumbum", "pexpect", "ptyprocess", "invoke", "fabric", "paramiko", "psutil", "docker",
    "IPython", "ipykernel", "jupyter_client", "pytest", "hypothesis", "loguru", "click",
    "zmq", "requests", "httpx", "urllib3", "aiohttp", "celery", "billiard", "multiprocess", "dask", "ray",
})
CACHE_LIMIT = 10_000  # refusals remembered; beyond it (a peer naming endless modules) each is recomputed

_DOTTED = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*\Z")


class Admission:
    """The modules and functions one worker admits; picklable, so pool children get a copy."""

    def __init__(self, imports: Iterable[str] = (), globs: Iterable[str] = ()) -> None:
        self.imports = frozenset(imports)
        self.globs: tuple[str, ...] = tuple(globs)
        for module in self.imports:
            if not _DOTTED.match(module):
                raise ValueError(f"--import {module!r} is not a module name; expected one like 'package.module'")
        for pattern in self.globs:
            if not isinstance(pattern, str) or not pattern:
                raise ValueError(f"--allow-module {pattern!r} must be a non-empty glob like 'myapp.*'")
        self._refusals: dict[str, str | None] = {}

    def describe(self) -> str:
        """What this worker admits, for its start-up log line and its errors."""
        parts = sorted(self.imports) + [f"glob {pattern!r}" for pattern in self.globs]
        return ", ".join(parts) or "none"

    def refusal(self, reference: str) -> str | None:
        """None if a job may import and look up ``reference`` (``module:qualname``); else why not."""
        if reference in self._refusals:
            return self._refusals[reference]
        module, _, qualname = reference.partition(":")
        reason = self.module_refusal(module) or _name_refusal(reference, qualname)
        if reason is not None:
            reason = f"task {reference!r} is not allowed on this worker: {reason}"
        if len(self._refusals) < CACHE_LIMIT:
            self._refusals[reference] = reason
        return reason

    def module_refusal(self, module: str) -> str | None:
        """None if ``module`` is admitted: named with --import, or matched by a glob it may match."""
        if module in self.imports:
            return None
        if not _DOTTED.match(module):
            return f"{module!r:.80} is not a module name"
        if not any(fnmatch.fnmatchcase(module, pattern) for pattern in self.globs):
            return (f"module {module!r} was not given with --import or matched by --allow-module "
                    f"(allowed: {self.describe()}); start the worker with --import {module}")
        top = module.partition(".")[0]
        if top in STDLIB or top in DANGEROUS:
            kind = "the standard library" if top in STDLIB else "the packages that can run code, processes or files"
            return (f"module {module!r} is part of {kind}, which --allow-module and --allow-any-module never "
                    f"admit; only naming it with --import {module} allows it")
        if any(part.startswith("_") for part in module.split(".")):
            return f"module {module!r} is private, which --allow-module never admits; name it with --import {module}"
        return None

    def target_refusal(self, reference: str, path: Sequence[object]) -> str | None:
        """None if the objects found along the qualname (``path``, the target last) may run."""
        module = reference.partition(":")[0]
        for step in path[:-1]:
            if not isinstance(step, type):
                return (f"task {reference!r} is not allowed: its path goes through a {type(step).__name__}; "
                        "a task must be a module-level function or a function of a class")
        target = path[-1]
        if isinstance(target, ModuleType) or not callable(target):
            return f"task {reference!r} is not allowed: it names a {type(target).__name__}, not a function"
        for step in path:
            defined_in = getattr(step, "__module__", None)
            if not isinstance(defined_in, str) or defined_in == module or defined_in.startswith(module + "."):
                continue
            reason = self.module_refusal(defined_in)
            if reason is not None:
                return (f"task {reference!r} is not allowed: it is defined in {defined_in!r}, not in {module!r}, "
                        f"and {reason}")
        return None


def _name_refusal(reference: str, qualname: str) -> str | None:
    if not _DOTTED.match(qualname):
        return f"{qualname!r:.80} is not a function name"
    if any(part.startswith("_") for part in qualname.split(".")):
        return f"{qualname!r} is private (a name starting with '_'); only public functions run as tasks"
    return None
