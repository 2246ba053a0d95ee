"""Generators of documentation tables from real runs: ``python -m tools.<name> --help``."""
