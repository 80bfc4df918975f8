"""Subcommands of ``python -m cryonb``; one module each (see :mod:`cryonb.cli`)."""
