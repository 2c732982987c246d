"""Offline generation of the assets the project needs (config bundles, tiny models, synthetic data)."""
