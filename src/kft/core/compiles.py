"""Counting XLA compiles, from JAX's own monitoring events.

JAX records `/jax/core/compile/backend_compile_duration` for every program it hands to XLA and
`/jax/compilation_cache/cache_hits` when the persistent cache ($KFT_CACHE/xla) served it instead.
kft writes every program to the persistent cache (`jax_persistent_cache_min_compile_time_secs` 0),
so a second identical run compiles nothing.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_lock = threading.Lock()
_counters: list["Compiles"] = []
_installed = False


@dataclass
class Compiles:
    """What JAX compiled while this counter was open: `programs` handed to the backend (cache
    hits included), their `seconds`, and `cache_hits` served from the persistent cache."""

    programs: int = 0
    seconds: float = 0.0
    cache_hits: int = 0

    @property
    def compiled(self) -> int:
        """Programs XLA actually compiled (not served from the persistent cache)."""
        return self.programs - self.cache_hits

    def start(self) -> "Compiles":
        _install()
        with _lock:
            _counters.append(self)
        return self

    def stop(self) -> "Compiles":
        with _lock:
            if self in _counters:
                _counters.remove(self)
        return self

    def __enter__(self) -> "Compiles":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def as_dict(self) -> dict:
        return {
            "compiled": self.compiled,
            "compile_s": round(self.seconds, 1),
            "xla_cache_hits": self.cache_hits,
        }

    def summary(self) -> str:
        return (
            f"{self.compiled} compiled ({self.seconds:.1f} s), {self.cache_hits} from the XLA cache"
        )


def _install() -> None:
    global _installed
    if _installed:
        return
    from jax import monitoring

    def on_duration(event: str, seconds: float, **_) -> None:
        if event == _COMPILE:
            with _lock:
                for c in _counters:
                    c.programs += 1
                    c.seconds += seconds

    def on_event(event: str, **_) -> None:
        if event == _HIT:
            with _lock:
                for c in _counters:
                    c.cache_hits += 1

    monitoring.register_event_duration_secs_listener(on_duration)
    monitoring.register_event_listener(on_event)
    _installed = True
