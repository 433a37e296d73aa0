"""One progress bar on stderr for the long commands (replay, sim collect / train / record / eval)."""
from __future__ import annotations

import sys
from typing import Callable


def progress_bar(label: str, unit: str = "") -> Callable[..., None]:
    """``show(done, total, note="")`` redraws ``label [####....] done/total unit note`` in place."""
    def show(done: int, total: int, note: str = "") -> None:
        width = 30
        filled = int(width * done / max(total, 1))
        text = f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        print(text + (f" {unit}" if unit else "") + (f" {note}" if note else ""), end="", file=sys.stderr,
              flush=True)
    return show
