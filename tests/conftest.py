"""Shared test set-up: non-interactive plotting, and warnings from our own code are errors."""

import os

os.environ.setdefault("MPLBACKEND", "Agg")
