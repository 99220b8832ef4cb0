"""Progress bars of the long loops, shown only where someone watches a foreground run.

Steps run by the daemon write to their compute logs, where bars would only add noise, so
bars are off unless a foreground command (`aindex demo`, `aindex process`) turns them on
for the duration of its runs, which execute in its own process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TextIO

from tqdm import tqdm

_stream: TextIO | None = None
_depth = 0  # bars open now


@contextmanager
def progress_shown(stream: TextIO) -> Iterator[None]:
    """Within the block, `progress` draws its bars on `stream`."""
    global _stream
    previous, _stream = _stream, stream
    try:
        yield
    finally:
        _stream = previous


@contextmanager
def progress_bar(total: int, what: str, unit: str = "image") -> Iterator[tqdm]:
    """A bar named `what`; call `update(n)` on it as work gets done. It stays silent unless
    progress is shown, and inside another bar (descriptors of each edit of an evaluation),
    where the outer bar already tells how far the step is."""
    global _depth
    shown = _stream is not None and _depth == 0
    _depth += 1
    try:
        with tqdm(
            total=total, desc=what, unit=unit, file=_stream, leave=False, disable=not shown
        ) as bar:
            yield bar
    finally:
        _depth -= 1
