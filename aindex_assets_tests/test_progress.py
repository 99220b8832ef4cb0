"""Progress bars: shown only in foreground runs, one at a time."""

from __future__ import annotations

import io

from aindex_assets.lib.progress import progress_bar, progress_shown


def test_bars_are_silent_unless_a_foreground_run_shows_them() -> None:
    stream = io.StringIO()
    with progress_bar(3, "descriptors") as bar:  # a daemon's step: nothing shown anywhere
        bar.update(3)
    with progress_shown(stream), progress_bar(3, "descriptors") as bar:
        bar.update(3)
    assert "descriptors: " in stream.getvalue()


def test_a_bar_inside_another_stays_silent() -> None:
    """The outer bar (edits of an evaluation) already says how far the step is."""
    stream = io.StringIO()
    with progress_shown(stream), progress_bar(2, "evaluation", unit="edit") as outer:
        for _ in range(2):
            with progress_bar(5, "descriptors") as inner:
                inner.update(5)
            outer.update()
    assert "evaluation: " in stream.getvalue()
    assert "descriptors" not in stream.getvalue()
