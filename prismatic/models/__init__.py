"""Prismatic VLM and VLA-Adapter policy models."""
