"""The `whybert` command in processes of its own: the server commands say how to install
what they miss, `whybert serve` refuses a pickled model with a clear message, `--tls`
alone trusts the default roots, and Ctrl-C ends a command with one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from _pki import make_pki
from _servers import ServerThread, tiny_settings


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def test_server_commands_without_the_server_extra_say_how_to_install_it(tmp_path: Any) -> None:
    # A Python that cannot import torch: the command must explain, not crash.
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] in ('torch', 'whybert_service'):
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _Block())
    """))
    env = {"PYTHONPATH": str(tmp_path), "PATH": ""}
    for command in ("serve", "train", "export-model"):
        result = subprocess.run(
            [sys.executable, "-c", "import whybert.cli, sys; sys.exit(whybert.cli.main())", command],
            capture_output=True, text=True, env=env,
        )
        assert result.returncode == 2
        assert 'pip install "whybert[server]"' in result.stderr


def test_server_commands_without_torch_say_how_to_install_it(tmp_path: Any) -> None:
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text(textwrap.dedent("""
        import sys
        class _Block:
            def find_spec(self, name, path=None, target=None):
                if name.split('.')[0] == 'torch':
                    raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        sys.meta_path.insert(0, _Block())
    """))
    result = subprocess.run(
        [sys.executable, "-c", "import whybert.cli, sys; sys.exit(whybert.cli.main())", "serve"],
        capture_output=True, text=True, env={"PYTHONPATH": str(tmp_path), "PATH": ""},
    )
    assert result.returncode == 2, result.stderr
    assert 'pip install "whybert[server]"' in result.stderr and "torch" in result.stderr


def test_serve_refuses_a_pickled_model_with_a_clear_message(tmp_path: Any) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")
    result = subprocess.run(
        [sys.executable, "-m", "whybert_service.cli", "serve", "--no-builtin-model", "--model", f"bad={tmp_path}",
         "--port", "0", "--metrics-port", "0"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2
    assert "no .safetensors weights" in result.stderr and "never unpickles" in result.stderr
    assert "Traceback" not in result.stderr


def test_the_cli_tls_flag_trusts_the_default_roots(
    tiny_model_dir: Path, pki: dict[str, Any], tmp_path: Path
) -> None:
    """`--tls` alone uses gRPC's default roots; a fresh process pointed at our CA as its
    default roots file stands in for a server with a publicly trusted certificate."""
    settings = tiny_settings(
        tiny_model_dir, tls_cert=str(pki["server"].cert), tls_key=str(pki["server"].key)
    )
    env = {**os.environ, "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(pki["ca"])}
    command = [sys.executable, "-m", "whybert.cli", "predict", "hello", "--json", "--timeout", "20"]
    with ServerThread(settings) as server:
        target = ["--target", server.target]
        ok = subprocess.run([*command, *target, "--tls"], env=env, capture_output=True, text=True)
        plain = subprocess.run([*command, *target], env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)[0]["text"] == "hello"
    assert plain.returncode == 1 and "UNAVAILABLE" in plain.stderr


def test_ctrl_c_ends_a_command_with_one_line_and_cancels_its_work(tiny_model_dir: Path) -> None:
    """SIGINT (a terminal's Ctrl-C) while an explanation waits on the server: exit 130 with
    one line, no traceback, and the server drops the request's rows."""
    from _servers import hold_worker_thread
    from _wait import wait_for

    with ServerThread(tiny_settings(tiny_model_dir, cache_entries=0)) as server:
        worker = server.server.registry.get("tiny").worker
        release = hold_worker_thread(worker)  # nothing finishes until the interrupt
        try:
            command = [sys.executable, "-m", "whybert.cli", "explain", "the food was great", "awful",
                       "--max-evals", "300", "--target", server.target]  # fmt: skip
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            wait_for(lambda: worker.queued_rows() > 0, timeout=30, message="the explanation never reached the queue")
            process.send_signal(signal.SIGINT)
            out, err = process.communicate(timeout=30)
        finally:
            release.set()
        assert process.returncode == 130, err
        assert err.strip() == "interrupted" and "Traceback" not in err and out == ""
        wait_for(lambda: worker.queued_rows() == 0, timeout=10, message="the interrupted request's rows stayed queued")


def test_a_reader_that_leaves_ends_the_command_quietly(tiny_model_dir: Path) -> None:
    """`whybert explain ... | head`: the closed pipe ends the command without an error,
    whether it fails while the command prints or only when the buffered rest is flushed."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}  # stdout buffered, as usual
    with ServerThread(tiny_settings(tiny_model_dir)) as server:
        command = [sys.executable, "-m", "whybert.cli", "explain", "--stream", "--max-evals", "40",
                   "--target", server.target, *(f"text number {i} was great" for i in range(20))]  # fmt: skip
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        assert process.stdout is not None and process.stderr is not None
        first = process.stdout.readline()
        process.stdout.close()  # the reader leaves after one line
        err = process.stderr.read()
        process.wait(30)
        assert json.loads(first)["index"] >= 0
        assert process.returncode == 141 and err == "", err
        # A short table, all of it still in the buffer when the command returns.
        read, write = os.pipe()
        os.close(read)  # a reader that is gone before anything is written
        table = [sys.executable, "-m", "whybert.cli", "predict", "good", "bad", "--target", server.target]
        done = subprocess.run(table, stdout=write, stderr=subprocess.PIPE, text=True, env=env, timeout=60)
        os.close(write)
    assert done.returncode == 141 and done.stderr == "", done.stderr
