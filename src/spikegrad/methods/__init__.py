"""Training methods that plug into :class:`spikegrad.trainer.Trainer` as components."""
