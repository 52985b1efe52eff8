"""Logging with a main-rank filter: rank 0 logs INFO to the console and ``log.txt``."""
from __future__ import annotations

import logging
import os
import sys
from typing import Optional

LOGGER_NAME = "cvgl"


def setup_logging(run_dir: Optional[str] = None, is_main: bool = True) -> logging.Logger:
    """Configure the project logger; non-main ranks only report warnings."""
    logger = logging.getLogger(LOGGER_NAME)
    logger.handlers.clear()
    logger.propagate = False
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    formatter = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(formatter)
    logger.addHandler(console)
    if run_dir is not None and is_main:
        handler = logging.FileHandler(os.path.join(run_dir, "log.txt"), encoding="utf-8")
        handler.setFormatter(formatter)
        logger.addHandler(handler)
    return logger


def get_logger() -> logging.Logger:
    return logging.getLogger(LOGGER_NAME)
