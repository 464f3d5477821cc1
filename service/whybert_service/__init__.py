"""whybert's server: a gRPC service that classifies texts and explains why.

Install with `pip install "whybert[server]"`. The path of a request:
`grpc.servicer` → `validation` → `dataplane` → `batching.worker` (one per model) →
`models.classifier`; explainers (`explainers.*`) submit their rows to the same worker.
"""

__version__ = "0.1.0"
