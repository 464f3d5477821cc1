"""Imported once by the explainer fork server: shap loaded and its numba kernels compiled,
so every child forked from it starts warm."""

from .partition import warm_up_shap

warm_up_shap()
