"""Every knob is a flag and a WHYBERT_* variable; the flag wins; bad values are refused."""

from __future__ import annotations

import argparse

import pytest
from whybert_service.settings import ServerSettings, add_arguments, from_sources


def parse(argv: list[str], env: dict[str, str] | None = None) -> ServerSettings:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return from_sources(parser.parse_args(argv), env or {})


def test_defaults() -> None:
    s = parse([])
    assert s.port == 50051 and s.host == "0.0.0.0" and s.device == "auto"
    assert s.reflection and not s.no_builtin_model and s.model == ()


def test_environment_fills_what_flags_leave_out() -> None:
    env = {
        "WHYBERT_PORT": "6000",
        "WHYBERT_MAX_BATCH_TOKENS": "1024",
        "WHYBERT_MAX_BATCH_DELAY_MS": "7.5",
        "WHYBERT_MODEL": "a=/models/a, b=/models/b",
        "WHYBERT_REFLECTION": "false",
        "WHYBERT_NO_BUILTIN_MODEL": "1",
    }
    s = parse([], env)
    assert s.port == 6000 and s.max_batch_tokens == 1024 and s.max_batch_delay_ms == 7.5
    assert s.model_paths() == {"a": "/models/a", "b": "/models/b"}
    assert not s.reflection and s.no_builtin_model


def test_flags_win_over_the_environment() -> None:
    s = parse(["--port", "7000", "--model", "x=/m/x", "--model", "y=/m/y", "--no-reflection"],
              {"WHYBERT_PORT": "6000", "WHYBERT_MODEL": "z=/m/z"})
    assert s.port == 7000
    assert s.model_paths() == {"x": "/m/x", "y": "/m/y"}
    assert not s.reflection


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--max-batch-tokens", "0"], {}, "--max-batch-tokens"),
        (["--model", "nopath"], {}, "NAME=PATH"),
        (["--model", "a=/x", "--model", "a=/y"], {}, "twice"),
        (["--tls-cert", "c.pem"], {}, "--tls-key"),
        (["--device", "tpu"], {}, "--device"),
        (["--cache-bytes", "-1"], {}, "--cache-bytes"),
        ([], {"WHYBERT_CACHE_ENTRIES": "-5"}, "--cache-entries"),
        (["--max-watch-streams", "0"], {}, "--max-watch-streams"),
        ([], {"WHYBERT_PORT": "not-a-number"}, "WHYBERT_PORT"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(argv: list[str], env: dict[str, str], fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        parse(argv, env)


def test_the_cache_is_bounded_in_bytes_and_watch_streams_are_capped() -> None:
    s = parse([])
    assert s.cache_bytes == 256 * 1024 * 1024 and s.cache_entries == 4096
    assert s.max_watch_streams == 64
    s = parse(["--cache-bytes", "1048576"], {"WHYBERT_MAX_WATCH_STREAMS": "8"})
    assert s.cache_bytes == 1_048_576 and s.max_watch_streams == 8
    assert parse([], {"WHYBERT_CACHE_BYTES": "0"}).cache_bytes == 0  # the cache off
