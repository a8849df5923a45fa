"""API keys and the audio-minutes ledger that the per-key limits count against."""
