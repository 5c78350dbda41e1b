"""Ports on 127.0.0.1 and waiting for a service to answer."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable
from typing import TypeVar

from ..errors import ReadinessTimeout

T = TypeVar("T")


def wait_until(
    check: Callable[[], T],
    *,
    timeout: float,
    interval: float = 0.1,
    transient: tuple[type[BaseException], ...] = (OSError,),
    what: str = "service",
    logs: Callable[[], str] | None = None,
) -> T:
    """Call ``check`` until it returns a truthy value or the deadline passes.

    Exceptions in ``transient`` are retried; anything else propagates.

    Raises:
        ReadinessTimeout: the deadline passed; carries ``logs()`` when given.
    """
    deadline = time.monotonic() + timeout
    last: BaseException | None = None
    while True:
        try:
            result = check()
            if result:
                return result
        except transient as exc:
            last = exc
        if time.monotonic() >= deadline:
            tail = ""
            if logs is not None:
                with contextlib.suppress(Exception):
                    tail = logs()
            reason = f": {last}" if last else ""
            raise ReadinessTimeout(f"{what} not ready after {timeout:.0f}s{reason}", logs=tail)
        time.sleep(interval)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
