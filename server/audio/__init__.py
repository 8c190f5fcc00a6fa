"""Audio edge: Opus codec wrappers, resampling and PCM helpers."""
