"""``python -m spikegrad`` runs the command line."""

import sys

from spikegrad.cli import main

sys.exit(main())
