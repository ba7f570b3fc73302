"""mood-monitor: a streaming speech mood monitor, and a researcher's API (``from monitor import MoodModel``).

The package root imports nothing at load time (``tests/test_layers.py``):
``MoodModel`` is loaded on first use (PEP 562), so ``import monitor.model``
does not pull in pandas and the live pipeline.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from monitor.api import MoodModel

__all__ = ["MoodModel"]


def __getattr__(name: str) -> Any:
    if name == "MoodModel":
        from monitor.api import MoodModel

        return MoodModel
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
