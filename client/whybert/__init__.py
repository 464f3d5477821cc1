"""whybert: class probabilities and per-token explanations from a whybert server.

    >>> import whybert
    >>> with whybert.Client("localhost:50051") as client:
    ...     [p.label for p in client.predict(["the food was great"])]
    ...     e = client.explain(["the food was great"])[0]
    ...     e.tokens, e.values  # values: tokens × explained labels

The client needs only grpcio, protobuf and numpy; the server is `pip install "whybert[server]"`.
"""

from ._client import AsyncClient, Client
from ._core import EXPLAIN_OPTIONS, USE_CLIENT_DEFAULT, TLSConfig
from ._exceptions import (
    CancelledError,
    DeadlineExceededError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    WhybertError,
)
from ._types import AttentionMaps, Entity, Explanation, Faithfulness, ModelInfo, Prediction, Progress
from .aggregate import Aggregate, WordStat, aggregate
from .corpus import CorpusResult, explain_corpus
from .evaluation import Evaluation, evaluate

__version__ = "0.1.0"

__all__ = [
    "EXPLAIN_OPTIONS",
    "USE_CLIENT_DEFAULT",
    "Aggregate",
    "AsyncClient",
    "AttentionMaps",
    "CancelledError",
    "Client",
    "CorpusResult",
    "DeadlineExceededError",
    "Entity",
    "Evaluation",
    "Explanation",
    "Faithfulness",
    "InternalError",
    "InvalidArgumentError",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Prediction",
    "Progress",
    "ResourceExhaustedError",
    "TLSConfig",
    "UnauthenticatedError",
    "UnavailableError",
    "WhybertError",
    "WordStat",
    "aggregate",
    "evaluate",
    "explain_corpus",
]
