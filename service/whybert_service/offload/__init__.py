"""Explanation work that can run outside the server process (no torch, no gRPC here):
shap's Partition algorithm and the pool of warm processes that runs it."""
