"""Evaluation: LIBERO simulator rollouts (parallel, resumable) and offline metrics on held-out episodes."""
