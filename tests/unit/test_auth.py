"""Bearer tokens (grpc/auth.py): where they come from (file, flag, environment), a tokens
file the server cannot use stops it from starting, and the check compares whole tokens.
(Tokens against a running server: integration/test_security.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from whybert_service import settings as settings_mod
from whybert_service.grpc.auth import TokenAuthInterceptor, load_tokens


def test_tokens_come_from_the_file_the_flag_and_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("from-file\n# a comment\n")
    monkeypatch.setenv("WHYBERT_AUTH_TOKENS", "env-one, env-two")
    monkeypatch.setenv("WHYBERT_AUTH_TOKENS_FILE", str(tokens_file))
    settings = settings_mod.from_sources(None)
    assert load_tokens(settings) == {"from-file", "env-one", "env-two"}
    monkeypatch.delenv("WHYBERT_AUTH_TOKENS")
    monkeypatch.delenv("WHYBERT_AUTH_TOKENS_FILE")
    assert load_tokens(settings_mod.ServerSettings()) == frozenset()  # open server


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read it"),
        ("", "holds no token"),
        ("# only a comment\n\n", "holds no token"),
        ("two words\n", "printable ASCII without spaces"),
        ("tökén\n", "printable ASCII without spaces"),
    ],
)
def test_an_unusable_tokens_file_stops_the_server_from_starting(
    tmp_path: Path, content: str | None, message: str
) -> None:
    tokens_file = tmp_path / "tokens"
    if content is not None:
        tokens_file.write_text(content)
    with pytest.raises(ValueError, match=message):
        load_tokens(settings_mod.ServerSettings(auth_tokens_file=str(tokens_file)))


def test_the_token_check_needs_tokens_and_compares_whole_tokens() -> None:
    with pytest.raises(ValueError):
        TokenAuthInterceptor([])
    auth = TokenAuthInterceptor(["s3cret"])
    assert auth.authorized([("authorization", "Bearer s3cret")])
    assert auth.authorized([("authorization", "  BEARER   s3cret ")])
    assert not auth.authorized([("authorization", "Bearer s3cret2")])
    assert not auth.authorized([("authorization", "Bearer s3cre")])
    assert not auth.authorized([])
