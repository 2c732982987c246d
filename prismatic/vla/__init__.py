"""VLA-specific pieces: robot constants, normalisation, datasets."""
