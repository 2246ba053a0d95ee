"""Re-runs of the papers' claims on the current code: ``python -m experiments.<name> --help``."""
