"""Logging: adarec reports through the standard `logging` module, never `print`.

Every module logs to a logger under ``"adarec"`` (``logging.getLogger(__name__)``) and, as a
library should, configures nothing: by default only warnings reach the console (Python's
last-resort handler). Scripts that want the messages call `setup_logging` once, which is what
the examples do: INFO to the console and to a file in their output folder.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(
    folder: str | Path | None = None, filename: str = "run.log", level: int = logging.INFO
) -> logging.Logger:
    """Send log records (adarec's, the script's and Python warnings) to the console and, with
    ``folder``, to ``folder/filename`` as well (appended). Returns the root logger.

    The console shows the bare message, the file adds time, level and logger name. Calling it
    again replaces the handlers it added before, so it is safe in notebooks.
    """
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_adarec", False)]:
        root.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    handlers: list[logging.Handler] = [console]
    if folder is not None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(Path(folder) / filename, encoding="utf-8")
        file.setFormatter(logging.Formatter(FORMAT))
        handlers.append(file)
    for handler in handlers:
        handler._adarec = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)
    return root


__all__ = ["setup_logging"]
