"""The one place that reaches into paddle.jit.to_static's default (SOT) mode.

``eager_from_here(recursive=True)``, called directly in a function, makes a to_static trace
run that function and its callees eagerly; outside a trace it does nothing. SOT recognises
the function object itself (``psdb.fallback``), so it must be called in the function that
needs it, not through a wrapper. Checked against paddle 3.3.1.
"""

from __future__ import annotations

from typing import Any

try:
    from paddle.jit.sot.psdb import fallback as eager_from_here
except ImportError:  # pragma: no cover - a paddle without SOT

    def eager_from_here(recursive: Any = False) -> Any:
        return None


__all__ = ["eager_from_here"]
