"""matplotlib figures without pyplot (no global state, no display), or one line naming the
extra that brings matplotlib."""

from __future__ import annotations

from typing import Any

from dino.errors import ConfigError


def new_figure(width: float, height: float, what: str) -> Any:
    """A ``matplotlib.figure.Figure`` of ``width`` x ``height`` inches, laid out
    constrained; ``what`` (e.g. "dino plot") names the command in the error raised when
    matplotlib is not installed."""
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ConfigError(f"{what} needs matplotlib: pip install 'dino[plot]'") from None
    return Figure(figsize=(width, height), layout="constrained")
