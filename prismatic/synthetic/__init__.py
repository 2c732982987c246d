"""Synthetic LIBERO: an offline stand-in for the real RLDS data, in the exact same format."""
