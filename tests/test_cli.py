"""The ``messages-mw`` command: config resolution, errors, help, and a real server run."""

from __future__ import annotations

import json
import logging
import math
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from messages_mw import cli
from messages_mw.app import Gateway
from messages_mw.auth import ApiKeyConfig, AuthConfig
from messages_mw.config import (
    ConfigError,
    GatewayConfig,
    MockConfig,
    OpenAIUpstreamConfig,
    UpstreamConfig,
    load_config,
)
from messages_mw.tags import HeaderNames

_REPO = Path(__file__).resolve().parent.parent
_OPTIONS = (
    "--host",
    "--port",
    "--config",
    "--upstream",
    "--api-key-env",
    "--workers",
    "--timeout",
    "--demo",
    "--log-level",
)
_VALID_TOML = """\
provider = "mock"

[mock]
latency_ms = 5.0

[upstream]
base_url = "https://from-file.example"
connect_timeout = 3.0

[[models]]
id = "claude-file-1"
display_name = "From the file"
"""


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    """The CLI configures process-wide logging; put it back so later tests see the default."""
    loggers = [logging.getLogger(name) for name in ("messages_mw", "messages_mw.usage")]
    saved = [(lg.level, lg.propagate, list(lg.handlers)) for lg in loggers]
    yield
    for lg, (level, propagate, handlers) in zip(loggers, saved, strict=True):
        lg.setLevel(level)
        lg.propagate = propagate
        lg.handlers[:] = handlers


def _config(*argv: str) -> GatewayConfig:
    return cli.build_config(cli.parse_args(["serve", *argv]))


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.toml"
    path.write_text(text)
    return path


def test_defaults_forward_to_anthropic_with_the_clients_keys() -> None:
    config = _config()
    assert config == GatewayConfig()
    assert config.provider == "anthropic" and config.upstream.api_key is None


def test_demo_uses_the_mock_provider() -> None:
    assert _config("--demo").provider == "mock"


def test_upstream_sets_the_base_url_and_the_anthropic_provider() -> None:
    config = _config("--upstream", "http://127.0.0.1:9999")
    assert config.provider == "anthropic"
    assert config.upstream.base_url == "http://127.0.0.1:9999"


def test_config_file_is_loaded(tmp_path: Path) -> None:
    config = _config("--config", str(_write(tmp_path, _VALID_TOML)))
    assert config.provider == "mock"
    assert config.mock == MockConfig(latency_ms=5.0)
    assert [model.id for model in config.models] == ["claude-file-1"]


def test_options_override_the_config_file(tmp_path: Path) -> None:
    path = _write(tmp_path, _VALID_TOML)
    config = _config("--config", str(path), "--upstream", "http://up.test", "--timeout", "42")
    assert config.provider == "anthropic"
    assert config.upstream == UpstreamConfig(
        base_url="http://up.test", connect_timeout=3.0, read_timeout=42.0
    )
    assert config.mock == MockConfig(latency_ms=5.0)


def test_api_key_env_reads_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MW_TEST_KEY", "sk-ant-test-123")
    config = _config("--upstream", "http://up.test", "--api-key-env", "MW_TEST_KEY")
    assert config.upstream.api_key == "sk-ant-test-123"


def test_a_missing_key_variable_exits_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("MW_TEST_ABSENT", raising=False)
    with pytest.raises(ConfigError, match="MW_TEST_ABSENT"):
        _config("--api-key-env", "MW_TEST_ABSENT")
    assert cli.main(["serve", "--api-key-env", "MW_TEST_ABSENT"]) == 2
    assert "MW_TEST_ABSENT" in capsys.readouterr().err


def test_a_bad_key_in_the_file_is_one_line_naming_key_and_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _write(tmp_path, '[upstream]\nbse_url = "http://x"\n')
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and "bse_url" in err


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ('[fallback]\ndefault_chain = ["nope/claude-haiku-4-5"]\n', "nope"),
        ('usage_file = "/nonexistent-dir/usage.jsonl"\n', "/nonexistent-dir/usage.jsonl"),
        ('[compression]\ndefault_bundle = "no-such-bundle"\n', "no-such-bundle"),
        (
            '[limits]\nstore = "redis"\n[[limits.rules]]\nscope = "key"\nrequests_per_minute = 1\n',
            "pip install 'messages-mw[redis]'",
        ),
    ],
    ids=["unknown-target", "unwritable-usage-file", "unknown-bundle", "redis-py-missing"],
)
def test_a_mistake_found_building_the_gateway_is_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    toml: str,
    named: str,
    workers: str,
) -> None:
    # Without the check in the parent, --workers 2 left each worker crashing on start and
    # uvicorn restarting it for ever.
    monkeypatch.setitem(sys.modules, "redis", None)  # as on a machine without redis-py
    path = _write(tmp_path, toml)
    assert cli.main(["serve", "--config", str(path), "--workers", workers]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert str(path) in err and named in err


@pytest.mark.parametrize(
    ("argv", "toml"),
    [
        (["--upstream", "api.anthropic.com"], None),
        ([], '[upstream]\nbase_url = "api.anthropic.com"\n'),
        ([], '[openai_upstreams.local]\nbase_url = "localhost:8000/v1"\n'),
    ],
    ids=["option", "upstream", "openai-upstream"],
)
def test_an_upstream_url_without_a_scheme_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], toml: str | None
) -> None:
    # It used to start, then answer 502 to every request.
    if toml is not None:
        argv = [*argv, "--config", str(_write(tmp_path, toml))]
    assert cli.main(["serve", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "url",
    [
        "http://upstream.test:99999",
        "http://upstream.test:abc",
        "http://[::1]]",
        "http://:80",
        "http://@",
    ],
)
@pytest.mark.parametrize("table", [None, "upstream", "upstreams.backup", "openai_upstreams.local"])
def test_an_upstream_url_with_a_bad_host_or_port_exits_2_naming_the_option_or_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    url: str,
    table: str | None,
) -> None:
    # The scheme check let these through: the start-up line's urlsplit().port, or the OpenAI
    # provider's httpx.URL, raised a traceback (exit 1); or it started and answered 502s.
    monkeypatch.setattr(cli, "run_uvicorn", lambda app, workers, options: 0)
    monkeypatch.setattr(cli, "tune_for_serving", lambda: None)
    if table is None:
        argv, named = ["--upstream", url], "--upstream"
    else:
        path = _write(tmp_path, f'[{table}]\nbase_url = "{url}/v1"\n')
        argv, named = ["--config", str(path)], str(path)
    assert cli.main(["serve", "--port", "0", *argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert named in err and url in err


def test_a_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["serve", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in capsys.readouterr().err


def test_a_file_that_is_not_utf8_is_one_line_naming_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # An editor's Latin-1 "é" raised UnicodeDecodeError out of load_config: a traceback.
    path = tmp_path / "gateway.toml"
    path.write_bytes('[[models]]\nid = "claude-x"\ndisplay_name = "Café"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)
    assert cli.main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err and str(path) in err


@pytest.mark.parametrize(
    "argv",
    [
        ["serve", "--demo", "--upstream", "http://x"],
        ["serve", "--timeout", "0"],
        ["serve", "--port", "70000"],
        ["serve", "--workers", "0"],
        ["serve", "--log-level", "loud"],
        [],
    ],
)
def test_bad_options_exit_2(argv: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_args(argv)
    assert exit_info.value.code == 2


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["serve", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in _OPTIONS:
        assert option in text


def test_startup_line_names_the_provider_but_never_a_secret() -> None:
    upstream = UpstreamConfig(base_url="https://user:pw@proxy.test:8443/api", api_key="sk-secret")
    line = cli._startup_line("::1", 8080, 4, GatewayConfig(upstream=upstream))
    assert line.startswith("messages-mw listening on http://[::1]:8080")
    assert "proxy.test:8443/api" in line and "4 workers" in line
    assert "sk-secret" not in line and "pw" not in line and "user" not in line
    assert "provider mock" in cli._startup_line("127.0.0.1", 80, 1, _config("--demo"))


def test_startup_line_keeps_an_ipv6_upstream_bracketed() -> None:
    # Rebuilt from hostname and port, it showed "http://::1:8443/api", which names no address.
    upstream = UpstreamConfig(base_url="http://user:pw@[::1]:8443/api")
    line = cli._startup_line("127.0.0.1", 8080, 1, GatewayConfig(upstream=upstream))
    assert "at http://[::1]:8443/api " in line and "pw" not in line and "user" not in line


def test_startup_line_says_which_key_the_upstream_gets() -> None:
    # Static gateway keys never go upstream: without an upstream key of its own the gateway
    # sends none (or a key's virtual key), which the line must not call "clients' own keys".
    def credentials(auth: AuthConfig, api_key: str | None = None) -> str:
        config = GatewayConfig(upstream=UpstreamConfig(api_key=api_key), auth=auth)
        return cli._startup_line("127.0.0.1", 80, 1, config).split(" with ")[1]

    static = AuthConfig(mode="static", keys=(ApiKeyConfig(id="a", key="k"),))
    virtual = AuthConfig(
        mode="static", keys=(ApiKeyConfig(id="a", key="k", upstream_api_key="sk-v"),)
    )
    alternate = AuthConfig(mode="static", keys=static.keys, header="x-gw-key")
    assert credentials(static).startswith("no key")
    assert credentials(static, "sk-up").startswith("configured key")
    assert credentials(virtual).startswith("each gateway key's upstream_api_key")
    assert credentials(alternate).startswith("clients' own keys")
    assert credentials(AuthConfig(mode="passthrough")).startswith("clients' own keys")
    assert "sk-v" not in credentials(virtual) and "sk-up" not in credentials(static, "sk-up")


def test_every_worker_rebuilds_the_config_the_parent_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Infinity ("no read timeout") has no JSON form: handed over as JSON it became null,
    # which every worker refused, for ever, while one process served the same file.
    path = _write(tmp_path, "[upstream]\nread_timeout = inf\nbase_url = 'http://up.test'\n")
    monkeypatch.setenv(cli._WORKER_ENV, "")  # restored after: main() sets it
    started: list[object] = []
    monkeypatch.setattr(cli, "run_uvicorn", lambda app, workers, options: started.append(app) or 0)
    assert cli.main(["serve", "--config", str(path), "--workers", "2", "--port", "0"]) == 0
    assert started == ["messages_mw.cli:create_app"]
    capsys.readouterr()
    # Each worker tunes its own process (uvicorn spawns workers: they inherit no settings);
    # recorded here rather than applied to the test run's own process.
    tuned: list[bool] = []
    monkeypatch.setattr(cli, "tune_for_serving", lambda: tuned.append(True))
    gateway = cli.create_app()
    assert isinstance(gateway, Gateway) and gateway.config == cli.build_config(
        cli.parse_args(["serve", "--config", str(path)])
    )
    assert gateway.config.upstream.read_timeout == math.inf
    assert tuned == [True]
    monkeypatch.delenv(cli._WORKER_ENV)
    with pytest.raises(RuntimeError, match=cli._WORKER_ENV):
        cli.create_app()


def test_port_0_is_announced_as_the_port_uvicorn_is_given(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    ports: list[int] = []
    monkeypatch.setattr(
        cli, "run_uvicorn", lambda app, workers, options: ports.append(options["port"]) or 0
    )
    monkeypatch.setattr(cli, "tune_for_serving", lambda: None)
    assert cli.main(["serve", "--demo", "--port", "0"]) == 0
    (port,) = ports
    assert port > 0 and f"listening on http://127.0.0.1:{port}," in capsys.readouterr().out


@pytest.mark.parametrize(("workers", "store"), [("2", "memory"), ("1", "memory"), ("2", "redis")])
def test_limits_in_memory_under_several_workers_are_warned_of(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    workers: str,
    store: str,
) -> None:
    # Each worker counts on its own: a limit of 3 let 6 of 12 requests through 2 workers.
    rule = '[[limits.rules]]\nscope = "key"\nrequests_per_minute = 3\n'
    path = _write(tmp_path, f'provider = "mock"\n[limits]\nstore = "{store}"\n{rule}')
    monkeypatch.setenv(cli._WORKER_ENV, "")  # restored after: main() sets it
    monkeypatch.setattr(cli, "run_uvicorn", lambda app, workers, options: 0)
    monkeypatch.setattr(cli, "tune_for_serving", lambda: None)
    assert cli.main(["serve", "--config", str(path), "--workers", workers, "--port", "0"]) == 0
    warned = "counts the limits in its own memory" in capsys.readouterr().err
    assert warned == (workers == "2" and store == "memory")


def test_without_uvicorn_it_says_how_to_install_it() -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from messages_mw.cli import main\n"
        "raise SystemExit(main(['serve', '--demo']))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=_REPO, capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert "pip install 'messages-mw[server]'" in done.stderr


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_listening(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"server exited with {process.returncode}:\n{log.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    pytest.fail(f"server did not listen on port {port} within 15 s:\n{log.read_text()}")


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=10)


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_port_in_use_is_one_error_line_and_never_announced_as_listening(workers: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["-m", "messages_mw", "serve", "--demo", "--port", str(port), "--workers", workers]
        done = subprocess.run(
            [sys.executable, *argv], cwd=_REPO, capture_output=True, text=True, timeout=30
        )
    assert done.returncode == 3
    assert "listening on" not in done.stdout
    assert done.stderr.strip() == (
        f"messages-mw: error: cannot listen on http://127.0.0.1:{port}: Address already in use"
    )


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_demo_answers_messages(tmp_path: Path, workers: str) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    argv = ["-m", "messages_mw", "serve", "--demo", "--port", str(port), "--workers", workers]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *argv],
            cwd=_REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=dict(os.environ),
        )
    try:
        _wait_until_listening(process, port, log)
        body = {
            "model": "claude-haiku-4-5",
            "max_tokens": 64,
            "messages": [{"role": "user", "content": "ping?"}],
        }
        response = httpx.post(f"http://127.0.0.1:{port}/v1/messages", json=body, timeout=10)
        assert response.status_code == 200
        assert "server" not in response.headers and "date" in response.headers
        message = response.json()
        assert message["type"] == "message" and message["role"] == "assistant"
        assert message["model"] == "claude-haiku-4-5" and message["stop_reason"] == "end_turn"
        assert message["content"][0]["type"] == "text" and "ping?" in message["content"][0]["text"]
        assert message["usage"]["input_tokens"] > 0 and message["usage"]["output_tokens"] > 0
    finally:
        _stop(process)
    output = log.read_text()
    assert f"listening on http://127.0.0.1:{port}, provider mock" in output


@pytest.mark.parametrize("workers", ["1", "2"])
def test_serve_with_prometheus_counts_every_workers_requests(tmp_path: Path, workers: str) -> None:
    port = _free_port()
    log = tmp_path / "server.log"
    config = _write(
        tmp_path, "provider = 'mock'\nusage_log = false\n[telemetry]\nprometheus = true\n"
    )
    # The multiprocess mode's shared directory goes here, so the test can see it removed.
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    argv = ["-m", "messages_mw", "serve", "--config", str(config), "--port", str(port)]
    with log.open("wb") as sink:
        process = subprocess.Popen(
            [sys.executable, *argv, "--workers", workers],
            cwd=_REPO,
            stdout=sink,
            stderr=subprocess.STDOUT,
            env=env,
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(process, port, log)
        sent = 0
        # A client, so a connection, per request, until every worker has served some (each
        # keeps its counts in a file of its own in the shared directory).
        while sent < _MIN_REQUESTS or _workers_counting(scratch) < int(workers):
            assert sent < 200, "the requests all went to one worker"
            with anthropic.Anthropic(base_url=base_url, api_key="-", max_retries=0) as client:
                message = client.messages.create(
                    model="claude-haiku-4-5",
                    max_tokens=16,
                    messages=[{"role": "user", "content": "count me"}],
                )
            assert message.stop_reason == "end_turn"
            sent += 1
        # Each scrape reaches one worker or the other: every one must show every request.
        counts = [_chat_requests_scraped(f"{base_url}/metrics", sent) for _ in range(12)]
    finally:
        _stop(process)
    assert counts == [sent] * 12, log.read_text()
    assert f"metrics at {base_url}/metrics" in log.read_text()
    assert list(scratch.iterdir()) == []


_MIN_REQUESTS = 20


def _workers_counting(scratch: Path) -> int:
    """How many processes have counted requests in the shared metrics directory under
    ``scratch`` (one when there is none: a single worker counts in memory)."""
    directories = list(scratch.glob("messages-mw-metrics-*"))
    if not directories:
        return 1
    return len({path.stem.rsplit("_", 1)[-1] for path in directories[0].glob("counter_*.db")})


def _chat_requests_scraped(url: str, expected: int) -> float:
    """The chat request count a scrape shows, once it shows ``expected`` (usage events
    reach the sinks a few ms after each answer), or after 2 s."""
    deadline = time.monotonic() + 2
    while True:
        # A fresh connection each time, so that any worker may take it.
        text = httpx.get(url, timeout=5, headers={"connection": "close"}).text
        counted = sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == "messages_mw_requests_total" and sample.labels["operation"] == "chat"
        )
        if counted >= expected or time.monotonic() > deadline:
            return counted
        time.sleep(0.02)


def test_the_shared_metrics_directory_goes_with_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The run made the directory and named it in the environment: both are gone after it, so
    # a later gateway in this process does not look for the deleted directory.
    config = _write(
        tmp_path, "provider = 'mock'\nusage_log = false\n[telemetry]\nprometheus = true\n"
    )
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    seen: list[str | None] = []

    def serve_and_stop(args: object, config: GatewayConfig, gateway: Gateway) -> int:
        seen.append(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        return 0

    monkeypatch.setattr(cli, "_serve", serve_and_stop)
    for _ in range(2):
        assert cli.main(["serve", "--config", str(config), "--workers", "2"]) == 0
    assert all(directory is not None for directory in seen) and seen[0] != seen[1]
    assert not any(Path(directory).exists() for directory in seen if directory)
    assert "PROMETHEUS_MULTIPROC_DIR" not in os.environ


def _demo_server(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """``messages-mw serve --demo`` with its stdout a pipe nobody reads (a stalled log
    shipper) and its stderr in a file."""
    port = _free_port()
    log = tmp_path / "stderr.log"
    argv = ["-m", "messages_mw", "serve", "--demo", "--port", str(port), *extra]
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=_REPO, stdout=subprocess.PIPE, stderr=errors
        )
    return process, port, log


def test_a_stalled_stdout_reader_stops_no_request(tmp_path: Path) -> None:
    # Every request's usage line and (once) uvicorn's access line went to stdout; the access
    # line was written on the event loop, so once the pipe filled, every request hung.
    process, port, log = _demo_server(tmp_path)
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 8,
        "messages": [{"role": "user", "content": "hi"}],
    }
    try:
        _wait_until_listening(process, port, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            # Far more than a 64 KB pipe holds, usage lines alone.
            for _ in range(400):
                assert client.post("/v1/messages", json=body).status_code == 200
    finally:
        _stop(process)
        assert process.stdout is not None
        output = process.stdout.read().decode()
    assert '"POST /v1/messages HTTP/1.1" 200' not in output  # no uvicorn access line


def test_access_log_prints_uvicorns_line_when_asked(tmp_path: Path) -> None:
    process, port, log = _demo_server(tmp_path, "--access-log")
    try:
        _wait_until_listening(process, port, log)
        forwarded = {"x-forwarded-for": "203.0.113.7"}
        answer = httpx.get(f"http://127.0.0.1:{port}/v1/models", headers=forwarded, timeout=5)
        assert answer.status_code == 200
    finally:
        _stop(process)
        assert process.stdout is not None
        output = process.stdout.read().decode()
    # The client behind the (local, trusted) proxy, not the proxy's own address.
    assert '203.0.113.7:0 - "GET /v1/models HTTP/1.1" 200' in output


@pytest.mark.parametrize(
    ("field", "name"),
    [
        ("session", "x-api-key"),
        ("tags", "Authorization"),
        ("provider", "content-length"),
        ("model", "bad name"),
        ("debug", "x-mw\r\nx-evil: 1"),
        ("fallback_used", "anthropic-ratelimit-requests-limit"),
    ],
)
def test_header_names_that_are_not_the_gateways_own_are_refused(field: str, name: str) -> None:
    # Read for a session id or tags, a key header's value (the key) would reach usage events
    # and error messages; added, a framing header or a bad name fails every response.
    with pytest.raises(msgspec.ValidationError, match=f"{field}: "):
        msgspec.convert({field: name}, HeaderNames)
    assert msgspec.convert({"session": "X-Team-Session"}, HeaderNames).session == "X-Team-Session"


def test_the_alternate_key_header_cannot_also_be_read_for_tags_or_sessions() -> None:
    auth = AuthConfig(mode="static", header="x-gateway-key", keys=())
    with pytest.raises(ValueError, match=r"headers\.session: 'x-gateway-key' is auth\.header"):
        GatewayConfig(auth=auth, headers=HeaderNames(session="X-Gateway-Key"))


def test_upstream_keys_and_header_values_no_header_may_carry_are_refused_unechoed() -> None:
    with pytest.raises(ValueError, match="api_key has a control character") as caught:
        UpstreamConfig(api_key="sk-ant-secret\n")
    assert "sk-ant-secret" not in str(caught.value)
    headers = {"Authorization": "Bearer sk-secret\n", "X-Team": "a"}
    with pytest.raises(ValueError, match=r"extra_headers\.Authorization: the value has") as caught:
        OpenAIUpstreamConfig(base_url="http://local.test/v1", extra_headers=headers)
    assert "sk-secret" not in str(caught.value)
    with pytest.raises(ValueError, match=re.escape("extra_headers.X-Team: the value 'a\\nb'")):
        OpenAIUpstreamConfig(base_url="http://local.test/v1", extra_headers={"X-Team": "a\nb"})


def test_a_key_read_from_the_environment_loses_the_newline_of_a_mounted_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MW_TEST_KEY", "sk-ant-from-a-file\n")
    args = cli._parser().parse_args(["serve", "--api-key-env", "MW_TEST_KEY"])
    assert cli.build_config(args).upstream.api_key == "sk-ant-from-a-file"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("https://user:S3CRET@proxy.example:99999", "Port out of range"),
        ("https://S3CRET@exa mple.com", "contains a blank"),
        ("https://S3CRET@proxy.example/anthropic#top", "takes no fragment"),
    ],
)
def test_a_bad_base_url_is_refused_without_its_credentials(url: str, said: str) -> None:
    with pytest.raises(ValueError, match=said) as caught:
        UpstreamConfig(base_url=url)
    assert "S3CRET" not in str(caught.value)


def test_usage_lines_are_written_whatever_the_log_level(capsys: pytest.CaptureFixture[str]) -> None:
    # --log-level quiets diagnostics; the usage lines are the gateway's per-request record.
    usage = logging.getLogger("messages_mw.usage")
    saved = (usage.level, usage.handlers[:], usage.propagate)
    try:
        usage.handlers.clear()
        cli._configure_logging("error")
        usage.info('{"request_id":"req_1"}')
        assert capsys.readouterr().out == '{"request_id":"req_1"}\n'
    finally:
        usage.setLevel(saved[0])
        usage.handlers[:] = saved[1]
        usage.propagate = saved[2]
        logging.getLogger("messages_mw").setLevel(logging.NOTSET)


def test_an_empty_config_path_is_an_error_not_the_defaults(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "run_uvicorn", lambda app, workers, options: 0)
    assert cli.main(["serve", "--config", ""]) == 2
    assert "cannot read config file" in capsys.readouterr().err


def test_a_config_nested_too_deeply_is_one_line_of_error(tmp_path: Path) -> None:
    path = _write(tmp_path, "x = " + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(path)


@pytest.mark.parametrize(
    ("toml", "located"),
    [
        (
            '[upstreams.a]\nbase_url = "http://a"\n[upstreams.b]\nbase_url = "http://b"\n'
            'read_timeout = "x"\n',
            '$.upstreams["b"].read_timeout',
        ),
        ('[openai_upstreams.loc]\nbase_url = "http://h:99999/v1"\n', '$.openai_upstreams["loc"]'),
        ('[pricing."claude-x"]\ninput = 1\noutput = "x"\n', '$.pricing["claude-x"].output'),
    ],
)
def test_an_error_in_a_named_entry_names_the_entry(tmp_path: Path, toml: str, located: str) -> None:
    # msgspec says [...] for a table's entry: with several upstreams, which one?
    with pytest.raises(ConfigError) as caught:
        load_config(_write(tmp_path, toml))
    assert located in str(caught.value)


def _slow_demo(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen[bytes], int, Path]:
    """The demo at four tokens a second: each answer takes seconds."""
    config = _write(tmp_path, 'provider = "mock"\n[mock]\ntokens_per_second = 4\n')
    port = _free_port()
    log = tmp_path / "stderr.log"
    argv = ["-m", "messages_mw", "serve", "--config", str(config), "--port", str(port), *extra]
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [sys.executable, *argv], cwd=_REPO, stdout=subprocess.PIPE, stderr=errors
        )
    _wait_until_listening(process, port, log)
    return process, port, log


def _requests_under_way(port: int) -> tuple[Iterator[bytes], httpx.Client, list[httpx.Response]]:
    """A stream with its first text read, and a plain request waiting for its answer."""
    import threading

    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 512,
        "messages": [{"role": "user", "content": "tell me about the weather in Lisbon in May"}],
    }
    client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    plain: list[httpx.Response] = []
    threading.Thread(
        target=lambda: plain.append(client.post("/v1/messages", json=body)), daemon=True
    ).start()
    request = client.build_request("POST", "/v1/messages", json={**body, "stream": True})
    stream = client.send(request, stream=True)
    chunks = stream.iter_bytes()
    while b"text_delta" not in next(chunks):
        pass
    return chunks, client, plain


def _usage_lines(process: subprocess.Popen[bytes]) -> list[dict[str, object]]:
    assert process.stdout is not None
    lines = process.stdout.read().decode().splitlines()
    return [json.loads(line) for line in lines if line.startswith("{")]


@pytest.mark.parametrize("how", ["graceful timeout", "second ctrl-c"])
def test_requests_cut_at_shutdown_are_told_so_and_keep_their_usage(
    tmp_path: Path, how: str
) -> None:
    # messages-mw serve waited for every stream however long it ran (orchestrators kill
    # after 10-30 s), and on a forced end no usage event of the requests under way was
    # written; the cut stream ended without an error event, the plain request got a 500.
    import signal

    graceful = "1" if how == "graceful timeout" else "60"
    process, port, _ = _slow_demo(tmp_path, "--graceful-timeout", graceful)
    try:
        chunks, client, plain = _requests_under_way(port)
        process.send_signal(signal.SIGINT)
        if how == "second ctrl-c":
            time.sleep(0.5)
            process.send_signal(signal.SIGINT)
        started = time.monotonic()
        rest = b"".join(chunks)
        assert time.monotonic() - started < 8
        assert b"event: error" in rest and b"overloaded_error" in rest
        assert b"message_stop" not in rest
        process.wait(timeout=15)
        deadline = time.monotonic() + 5
        while not plain and time.monotonic() < deadline:
            time.sleep(0.05)
        client.close()
    finally:
        _stop(process)
    if how == "graceful timeout":  # a forced exit closes the connection unanswered
        assert plain and plain[0].status_code == 529
        assert plain[0].json()["error"]["type"] == "overloaded_error"
    events = _usage_lines(process)
    assert len(events) == 2
    assert all(event["error_type"] == "cancelled" for event in events)
    assert [event["input_tokens"] > 0 for event in events if event.get("stream")] == [True]
