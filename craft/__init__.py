"""CRaFT: constrained fine-tuning that keeps a model's representation within a retention budget.

A small library that depends only on torch: feature pooling, retention loss, conflict-aware gradient projection,
the dual variable and the optimizer step that combines them. It knows nothing about Prismatic or LIBERO.
"""

__version__ = "0.1.0"
