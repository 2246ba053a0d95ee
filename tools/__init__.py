"""Tools over the repository: documentation tables from real runs, code metrics.

``python -m tools.<name> --help``.
"""
