"""BLAS held to one thread while a task fits or judges (``@one_blas_thread``).

numpy's OpenBLAS starts a thread per core in every process. Tasks side by side on a worker
(mapped fit tasks, several worker slots) then oversubscribe its cores: two fit tasks on two cores
were seven times slower (``benchmarks/forecast_throughput.py --side-by-side 2``). The limit is
process-wide, so calls that overlap in threads share one: the first in sets it, the last out
gives the process its thread count back."""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from threadpoolctl import threadpool_limits

F = TypeVar("F", bound=Callable[..., Any])

_lock = threading.Lock()
_holders = 0
_limiter: threadpool_limits | None = None


def one_blas_thread(func: F) -> F:
    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _holders, _limiter
        with _lock:
            if _holders == 0:
                _limiter = threadpool_limits(1, user_api="blas")
            _holders += 1
        try:
            return func(*args, **kwargs)
        finally:
            with _lock:
                _holders -= 1
                if _holders == 0 and _limiter is not None:
                    _limiter.restore_original_limits()
                    _limiter = None

    return wrapper  # type: ignore[return-value]
