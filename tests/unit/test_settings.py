"""Every knob is a flag and a WHYBERT_* variable; the flag wins; bad values are refused in
one line that names the flag; secrets stay out of the log; /metrics follows the server's
security."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable

import pytest
from pydantic import ValidationError
from whybert_service import cli
from whybert_service.settings import ServerSettings, SettingsError, add_arguments, env_name, flag, from_sources

Parse = Callable[..., ServerSettings]


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No WHYBERT_* variable of the shell running the tests leaks into them."""
    for name in list(os.environ):
        if name.startswith("WHYBERT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def parse(monkeypatch: pytest.MonkeyPatch) -> Parse:
    """Parse `argv` as `whybert serve` does, with `env` set as variables."""

    def run(argv: list[str], env: dict[str, str] | None = None) -> ServerSettings:
        for name, value in (env or {}).items():
            monkeypatch.setenv(name, value)
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return from_sources(parser.parse_args(argv))

    return run


def test_defaults(parse: Parse) -> None:
    s = parse([])
    assert s.port == 50051 and s.host == "0.0.0.0" and s.device == "auto" and s.metrics_port == 9464
    assert s.reflection and not s.no_builtin_model and s.model == ()
    assert s.metrics_host == "" and s.auth_tokens.get_secret_value() == "" and s.log_level == "warning"


def test_environment_fills_what_flags_leave_out(parse: Parse) -> None:
    env = {
        "WHYBERT_PORT": "6000",
        "WHYBERT_MAX_BATCH_TOKENS": "1024",
        "WHYBERT_MAX_BATCH_DELAY_MS": "7.5",
        "WHYBERT_MODEL": "a=/models/a, b=/models/b",
        "WHYBERT_REFLECTION": "false",
        "WHYBERT_NO_BUILTIN_MODEL": "1",
        "WHYBERT_DTYPE": "bfloat16",
        "WHYBERT_LOG_LEVEL": "INFO",
        "WHYBERT_METRICS_HOST": "10.1.2.3",
        "WHYBERT_HOST": "",  # empty is unset, as it always was
    }
    s = parse([], env)
    assert s.port == 6000 and s.max_batch_tokens == 1024 and s.max_batch_delay_ms == 7.5
    assert s.model_paths() == {"a": "/models/a", "b": "/models/b"}
    assert not s.reflection and s.no_builtin_model
    assert s.dtype == "bfloat16" and s.log_level == "info" and s.metrics_host == "10.1.2.3"
    assert s.host == "0.0.0.0"


def test_flags_win_over_the_environment(parse: Parse) -> None:
    s = parse(
        ["--port", "7000", "--model", "x=/m/x", "--model", "y=/m/y", "--no-reflection", "--auth-tokens", "flag-t"],
        {"WHYBERT_PORT": "6000", "WHYBERT_MODEL": "z=/m/z", "WHYBERT_REFLECTION": "true",
         "WHYBERT_AUTH_TOKENS": "env-t"},
    )
    assert s.port == 7000
    assert s.model_paths() == {"x": "/m/x", "y": "/m/y"}
    assert not s.reflection
    assert s.auth_tokens.get_secret_value() == "flag-t"
    # --reflection switches back on what the variable switched off; a comma in a flag's pair stays
    s = parse(["--reflection", "--model", "a=/m/a,b"], {"WHYBERT_REFLECTION": "0"})
    assert s.reflection and s.model_paths() == {"a": "/m/a,b"}


@pytest.mark.parametrize(
    ("argv", "env", "fragment"),
    [
        (["--max-batch-tokens", "0"], {}, "--max-batch-tokens '0': Input should be greater than 0"),
        (["--max-watch-streams", "-3"], {}, "--max-watch-streams"),
        (["--explain-threads", "0"], {}, "--explain-threads"),
        (["--model", "nopath"], {}, "--model: expects NAME=PATH"),
        (["--model", "a=/x", "--model", "a=/y"], {}, "--model: model 'a' is given twice"),
        ([], {"WHYBERT_MODEL": "a=/x, =/y"}, "WHYBERT_MODEL="),
        (["--tls-cert", "c.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--tls-key", "k.pem"], {}, "--tls-cert and --tls-key go together"),
        (["--tls-client-ca", "ca.pem"], {}, "--tls-client-ca needs --tls-cert"),
        (["--device", "tpu"], {}, "--device 'tpu': must be auto, cpu, cuda or cuda:N"),
        (["--device", "cudax"], {}, "--device"),
        (["--cache-bytes", "-1"], {}, "--cache-bytes '-1': Input should be greater than or equal to 0"),
        ([], {"WHYBERT_CACHE_ENTRIES": "-5"}, "WHYBERT_CACHE_ENTRIES='-5' (--cache-entries)"),
        ([], {"WHYBERT_PORT": "not-a-number"}, "WHYBERT_PORT='not-a-number' (--port): Input should be a valid int"),
        (["--port", "70000"], {}, "--port '70000'"),
        (["--metrics-port", "-1"], {}, "--metrics-port"),
        (["--max-batch-delay-ms", "-1"], {}, "--max-batch-delay-ms"),
        (["--max-batch-ms", "nan"], {}, "--max-batch-ms 'nan': Input should be a finite number"),
        (["--grace-seconds", "inf"], {}, "--grace-seconds 'inf': Input should be a finite number"),
        ([], {"WHYBERT_DTYPE": "float8"}, "WHYBERT_DTYPE='float8' (--dtype)"),
        ([], {"WHYBERT_LOG_LEVEL": "loud"}, "WHYBERT_LOG_LEVEL='loud' (--log-level)"),
        ([], {"WHYBERT_REFLECTION": "maybe"}, "WHYBERT_REFLECTION='maybe' (--reflection)"),
    ],
)
def test_bad_settings_are_refused_with_the_flag_named(
    parse: Parse, argv: list[str], env: dict[str, str], fragment: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        parse(argv, env)
    assert fragment in str(exc.value)
    assert "\n" not in str(exc.value)  # one line, not pydantic's report


def test_every_problem_is_reported_at_once(parse: Parse) -> None:
    with pytest.raises(SettingsError) as exc:
        parse(["--port", "-1", "--max-ig-steps", "0"])
    assert "--port" in str(exc.value) and "--max-ig-steps" in str(exc.value)


def test_the_cli_prints_one_line_and_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--max-batch-tokens", "0", "--port", "0", "--metrics-port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --max-batch-tokens '0'") and err.count("\n") == 1
    assert "Traceback" not in err and "validation error" not in err


def test_the_cli_refuses_a_bad_variable_too(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("WHYBERT_MAX_QUEUED_ROWS", "lots")
    assert cli.main(["serve"]) == 2
    assert capsys.readouterr().err.startswith("error: WHYBERT_MAX_QUEUED_ROWS='lots' (--max-queued-rows)")


def test_help_lists_every_flag_with_its_doc_variable_and_default(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["serve", "--help"])
    assert exc.value.code == 0
    squeezed = "".join(capsys.readouterr().out.split())  # independent of argparse's wrapping
    for name, info in ServerSettings.model_fields.items():
        assert flag(name) in squeezed and env_name(name) in squeezed
        assert "".join(str(info.description).split()) in squeezed, name
    assert "--no-reflection" in squeezed and "--modelNAME=PATH" in squeezed
    assert "[envWHYBERT_MAX_BATCH_TOKENS;default8192]" in squeezed
    assert "{auto,float32,bfloat16,float16}" in squeezed


def test_switches_keep_their_shapes() -> None:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert parser.parse_args(["--no-builtin-model"]).no_builtin_model is True
    with pytest.raises(SystemExit):  # a flag, not --no-builtin-model=VALUE or --no-no-builtin-model
        parser.parse_args(["--no-no-builtin-model"])
    assert parser.parse_args(["--no-reflection"]).reflection is False
    unset = parser.parse_args([])
    assert all(getattr(unset, name) is None for name in ServerSettings.model_fields)  # the variable may fill


def test_tokens_are_a_secret_the_log_does_not_show(parse: Parse) -> None:
    s = parse(["--auth-tokens", "hunter2,swordfish"])
    logged = s.describe()
    assert logged["auth_tokens"] == "**********"
    assert "hunter2" not in repr(logged) and "hunter2" not in repr(s) and "hunter2" not in str(s)
    assert logged["port"] == 50051 and logged["model"] == []
    assert parse([]).describe()["auth_tokens"] == ""  # none set: nothing to hide


def test_settings_are_frozen() -> None:
    s = ServerSettings()
    with pytest.raises(ValidationError):
        s.port = 1  # type: ignore[misc]
    with pytest.raises(ValidationError):
        ServerSettings(no_such_setting=1)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("argv", "env", "address"),
    [
        ([], {}, "0.0.0.0"),
        (["--host", "10.0.0.5"], {}, "10.0.0.5"),
        (["--host", "10.0.0.5", "--auth-tokens", "t0k3n"], {}, "127.0.0.1"),
        ([], {"WHYBERT_AUTH_TOKENS": "t0k3n"}, "127.0.0.1"),
        (["--auth-tokens-file", "tokens.txt"], {}, "127.0.0.1"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {}, "127.0.0.1"),
        (["--auth-tokens", " , "], {}, "0.0.0.0"),  # no token in it: an open server
        (["--auth-tokens", "t0k3n", "--metrics-host", "0.0.0.0"], {}, "0.0.0.0"),
        (["--tls-cert", "c.pem", "--tls-key", "k.pem"], {"WHYBERT_METRICS_HOST": "10.9.9.9"}, "10.9.9.9"),
    ],
)
def test_metrics_listen_on_loopback_when_the_server_is_secured(
    parse: Parse, argv: list[str], env: dict[str, str], address: str
) -> None:
    assert parse(argv, env).metrics_address() == address
