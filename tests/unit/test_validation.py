"""Request validation (grpc/validation.py) without a server: the bound on an Explain reply's
size counts the model's window, not every character. (Every bad request against a running
server: integration/test_bad_input.py; the bound against real replies:
integration/test_reply_size.py.)"""

from __future__ import annotations

import pytest
from whybert_service.grpc import validation
from whybert_service.types import ExplainParams, TargetModeName


def test_the_largest_request_the_limits_allow_fits_the_default_message_limit() -> None:
    """64 texts at the character limit, all labels of a 3-label model with 512 tokens: the
    bound counts the model's window, not every character, so this is not refused."""
    labels = ["negative", "neutral", "positive"]
    limits = validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000)
    for char in ("a", "é", "中", "😀"):
        params = ExplainParams(model="", texts=(char * 20_000,) * 64, target_mode=TargetModeName.ALL)
        validation.check_reply_size(params, labels, 512, limits)  # does not raise
    many = [f"label {i}" for i in range(100)]
    params = ExplainParams(model="", texts=("a" * 20_000,) * 64, target_mode=TargetModeName.ALL)
    with pytest.raises(validation.InvalidArgument, match="--max-message-bytes"):
        validation.check_reply_size(params, many, 512, limits)
    one = ExplainParams(model="", texts=("a" * 20_000,) * 64)  # the predicted label only
    validation.check_reply_size(one, many, 512, limits)
