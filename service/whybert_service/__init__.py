"""whybert's server: a gRPC service that classifies texts and explains why.

Install with `pip install "whybert[server]"`. The path of a request:
`grpc.servicer` → `grpc.validation` → `dataplane` → `explainers.*` → `batching.worker`
(one per model, with its scheduler `batching.queue`) → `models.classifier`. `compose`
loads the models and starts their workers into the `registry`. See docs/architecture.md.
"""

__version__ = "0.1.0"
