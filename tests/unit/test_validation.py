"""Request validation (grpc/validation.py) without a server: the bound on an Explain reply's
size counts the model's window, not every character. (Every bad request against a running
server: integration/test_bad_input.py; the bound against real replies:
integration/test_reply_size.py.)"""

from __future__ import annotations

import pytest
from whybert.v1 import explainer_pb2 as pb
from whybert_service.grpc import validation
from whybert_service.types import ExplainParams, IntegratedGradientsParams, LimeParams, ShapParams, TargetModeName


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


def test_options_left_out_take_the_servers_limit_where_it_is_below_the_default() -> None:
    """An operator who lowers --max-lime-samples (or the SHAP or gradient limits) below the
    defaults must not make every Explain that leaves those options out INVALID_ARGUMENT."""
    low = validation.Limits(64, 20_000, 200, 1_000, 16, 200_000)
    params = validation.explain_params(pb.ExplainRequest(texts=["fine"]), low)
    assert params.shap.max_evals == 200 < ShapParams.max_evals
    assert params.lime.num_samples == 1_000 < LimeParams.num_samples
    assert params.integrated_gradients.n_steps == 16 < IntegratedGradientsParams.n_steps
    high = validation.Limits(64, 20_000, 4000, 10_000, 512, 200_000)
    defaults = validation.explain_params(pb.ExplainRequest(texts=["fine"]), high)
    assert defaults.shap.max_evals == ShapParams.max_evals and defaults.lime.num_samples == LimeParams.num_samples
    with pytest.raises(validation.InvalidArgument, match=r"lime\.num_samples"):  # asked for: still refused
        validation.explain_params(pb.ExplainRequest(texts=["fine"], lime=pb.LimeOptions(num_samples=5_000)), low)
