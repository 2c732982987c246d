"""Small utilities shared by the models, data and training code."""
