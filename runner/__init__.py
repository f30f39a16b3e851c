"""runner: a distributed task runner for Python.

``Client(address)`` connects to a broker (``Client()`` starts an embedded local
cluster); ``submit`` returns a concurrent.futures.Future. ``AsyncClient`` is the same on
an asyncio loop. See README.md.
"""

from loguru import logger

from runner.aio import AsyncClient, AsyncJobFuture
from runner.client import Client, JobFuture
from runner.compose import GroupFuture, chain, group
from runner.current import get_client
from runner.executor import ClusterExecutor
from runner.errors import (AuthenticationError, BackpressureError, BrokerUnreachable, ClientClosed, ClusterGone, DependencyError,
                           LimitError,
                           PayloadTooLargeError, RemoteTraceback, TaskError, TaskNotAllowedError, TaskTimeoutError,
                           WorkerLostError, WorkerPoolError)
from runner.local import LocalCluster
from runner.sync import Event, Lock, Queue, Semaphore
from runner.tasks import JobResult, Task, task

__all__ = [
    "AsyncClient",
    "AsyncJobFuture",
    "AuthenticationError",
    "BackpressureError",
    "BrokerUnreachable",
    "Client",
    "ClientClosed",
    "ClusterExecutor",
    "ClusterGone",
    "DependencyError",
    "Event",
    "GroupFuture",
    "JobFuture",
    "JobResult",
    "Lock",
    "Queue",
    "Semaphore",
    "chain",
    "get_client",
    "group",
    "LimitError",
    "LocalCluster",
    "PayloadTooLargeError",
    "RemoteTraceback",
    "Task",
    "TaskError",
    "TaskNotAllowedError",
    "TaskTimeoutError",
    "WorkerLostError",
    "WorkerPoolError",
    "task",
]

# A library stays quiet unless the application asks: the CLI enables these logs.
logger.disable("runner")
logger.disable("workers")
