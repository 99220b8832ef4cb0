"""Progress bars of the long loops, shown only where someone watches a foreground run.

Steps run by the daemon write to their compute logs, where bars would only add noise, so
bars are off unless a foreground command (`aindex demo`, `aindex process`) turns them on
for the duration of its runs, which execute in its own process. The switch is a context
variable: batches run in other threads (tests do) never see it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TextIO

from tqdm import tqdm

_stream: ContextVar[TextIO | None] = ContextVar("progress_stream", default=None)
_open_bars: ContextVar[int] = ContextVar("open_progress_bars", default=0)


@contextmanager
def progress_shown(stream: TextIO) -> Iterator[None]:
    """Within the block, `progress_bar` draws its bars on `stream`."""
    token = _stream.set(stream)
    try:
        yield
    finally:
        _stream.reset(token)


@contextmanager
def progress_bar(total: int, what: str, unit: str = "image") -> Iterator[tqdm]:
    """A bar named `what`; call `update(n)` on it as work gets done. It stays silent unless
    progress is shown, and inside another bar (descriptors of each edit of an evaluation),
    where the outer bar already tells how far the step is."""
    stream, depth = _stream.get(), _open_bars.get()
    token = _open_bars.set(depth + 1)
    try:
        with tqdm(
            total=total,
            desc=what,
            unit=unit,
            file=stream,
            leave=False,
            disable=stream is None or depth > 0,
        ) as bar:
            yield bar
    finally:
        _open_bars.reset(token)
