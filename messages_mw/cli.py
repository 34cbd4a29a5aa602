"""The ``messages-mw`` command: run the gateway standalone on uvicorn.

``messages-mw serve`` (or ``python -m messages_mw serve``) resolves one immutable
:class:`~messages_mw.config.GatewayConfig` from a TOML file and the command-line options
(:func:`build_config`), then serves :class:`~messages_mw.app.Gateway` with uvicorn, which is the
optional ``server`` extra. With several workers uvicorn needs an import string, so the resolved
config travels to the worker processes as JSON in an environment variable read by
:func:`create_app`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import logging
import math
import os
import shutil
import socket
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import msgspec

from .app import Gateway
from .config import ConfigError, GatewayConfig, UpstreamConfig, load_config

# tune_gc_for_serving was first documented here; it stays importable from this module.
from .tuning import tune_for_serving, tune_gc_for_serving

__all__ = [
    "build_config",
    "create_app",
    "main",
    "parse_args",
    "serving_options",
    "tune_for_serving",
    "tune_gc_for_serving",
]

_WORKER_ENV = "MESSAGES_MW_WORKER_SETTINGS"
# Where prometheus-client's multiprocess mode keeps every process's counts.
_METRICS_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
# uvicorn's exit status when it cannot start, such as a port in use.
_STARTUP_FAILURE = 3
# How long requests under way may run on after SIGTERM or a first Ctrl-C.
DEFAULT_GRACEFUL_TIMEOUT = 25.0
# After a second Ctrl-C: how long the cut requests, then the gateway's closing, may take.
FORCED_EXIT_SECONDS = 2.0

logger = logging.getLogger("messages_mw")
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")
_INSTALL_HINT = (
    "messages-mw: uvicorn is not installed; install the server extra with "
    "pip install 'messages-mw[server]'"
)


class _WorkerSettings(msgspec.Struct, frozen=True):
    """What a worker process needs from the parent: the resolved config and the log level."""

    config: GatewayConfig
    log_level: str = "info"


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def _positive_float(text: str) -> float:
    if not (value := _number(text)) > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0: {text!r}")
    return value


def _seconds_or_zero(text: str) -> float:
    if not 0 <= (value := _number(text)) < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text!r}")
    return value


def _int_in(low: int, high: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high}: {value}")
        return value

    return parse


def _add_server_options(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument
    add("--host", default="127.0.0.1", help="Interface to listen on (default: %(default)s).")
    add("--port", type=_int_in(0, 65535), default=8080, help="TCP port (default: %(default)s).")
    add(
        "--workers",
        metavar="N",
        type=_int_in(1, 1024),
        default=1,
        help="Number of worker processes (default: %(default)s).",
    )
    add(
        "--log-level",
        choices=_LOG_LEVELS,
        default="info",
        help="Logging level for the server and the gateway's diagnostics; usage lines are "
        "written whatever it is (default: %(default)s).",
    )
    add(
        "--graceful-timeout",
        metavar="SECONDS",
        type=_seconds_or_zero,
        default=DEFAULT_GRACEFUL_TIMEOUT,
        help="On SIGTERM or Ctrl-C, how long requests under way may run before they are cut, "
        "each with its usage recorded (default: %(default)s, under the 30 s an orchestrator "
        "such as Kubernetes gives before it kills). A second Ctrl-C cuts them at once.",
    )
    add(
        "--access-log",
        action="store_true",
        help="Also print uvicorn's access log line per request, with the client address taken "
        "from X-Forwarded-For when a local proxy sends one (default: off; the usage log "
        "already has a JSON line per request).",
    )


def _add_gateway_options(serve: argparse.ArgumentParser) -> None:
    add = serve.add_argument
    add("--config", metavar="FILE", help="TOML config file; the other options override it.")
    source = serve.add_mutually_exclusive_group()
    source.add_argument(
        "--upstream",
        metavar="URL",
        help="Forward to this Anthropic-compatible base URL (sets provider = anthropic).",
    )
    source.add_argument(
        "--demo",
        action="store_true",
        help="Answer with the built-in deterministic mock provider; no upstream or key needed.",
    )
    add(
        "--api-key-env",
        metavar="NAME",
        help="Read the upstream API key from this environment variable "
        "(default: forward each client's own key).",
    )
    add(
        "--timeout",
        metavar="SECONDS",
        type=_positive_float,
        help="Read timeout of the default upstream ([upstream]), also the longest silence "
        "allowed inside its streams; [upstreams.*] and [openai_upstreams.*] keep their own.",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="messages-mw",
        description="An Anthropic Messages API gateway.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    serve = commands.add_parser(
        "serve",
        help="Run the gateway standalone on uvicorn.",
        description="Run the gateway standalone on uvicorn.",
    )
    _add_server_options(serve)
    _add_gateway_options(serve)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse command-line options; argparse exits with status 2 (or 0 for ``--help``)."""
    return _parser().parse_args(argv)


def build_config(args: argparse.Namespace) -> GatewayConfig:
    """Resolve the gateway config: the ``--config`` file (or the defaults), then the options.

    Raises :class:`~messages_mw.config.ConfigError` for an invalid file or a missing key
    variable; the message names the file and key, or the option.
    """
    config = load_config(args.config) if args.config is not None else GatewayConfig()
    upstream = config.upstream
    if args.demo:
        config = msgspec.structs.replace(config, provider="mock")
    if args.upstream:
        if not args.upstream.startswith(("http://", "https://")):
            raise ConfigError(
                f"--upstream: expected an http:// or https:// URL, got '{args.upstream}'"
            )
        config = msgspec.structs.replace(config, provider="anthropic")
        upstream = _with_base_url(upstream, args.upstream)
    if args.api_key_env:
        upstream = msgspec.structs.replace(upstream, api_key=_key_from_env(args.api_key_env))
    if args.timeout is not None:
        upstream = msgspec.structs.replace(upstream, read_timeout=args.timeout)
    return msgspec.structs.replace(config, upstream=upstream)


def _with_base_url(upstream: UpstreamConfig, url: str) -> UpstreamConfig:
    try:
        return msgspec.structs.replace(upstream, base_url=url)
    except ValueError as exc:  # a bad port, refused by UpstreamConfig
        raise ConfigError(f"--upstream: {exc}") from exc


def _key_from_env(name: str) -> str:
    # Surrounding blanks are no part of a key: a secret mounted from a file often ends in a
    # newline, which no header may carry.
    key = (os.environ.get(name) or "").strip()
    if not key:
        raise ConfigError(f"--api-key-env: environment variable {name} is not set or empty")
    return key


def _without_credentials(url: str) -> str:
    parts = urlsplit(url)
    # Cut the user info off the netloc rather than rebuild it from hostname and port: that
    # would drop an IPv6 literal's brackets ("http://::1:8443" names no address).
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _describe_provider(config: GatewayConfig) -> str:
    if config.provider == "mock":
        return "provider mock (demo, deterministic replies)"
    upstream: UpstreamConfig = config.upstream
    shown = _without_credentials(upstream.base_url)
    return f"provider anthropic at {shown} with {_upstream_credentials(config)}"


def _upstream_credentials(config: GatewayConfig) -> str:
    """Which key the upstream gets, in the words of the start-up line."""
    auth = config.auth
    if config.upstream.api_key:
        return "configured key"
    if auth.mode != "static" or auth.header:
        return "clients' own keys"
    # Static keys are the gateway's, never sent on: only a key's own upstream key is.
    if any(key.upstream_api_key for key in auth.keys):
        return "each gateway key's upstream_api_key"
    return "no key (gateway keys are not sent upstream; set upstream.api_key)"


def _startup_line(host: str, port: int, workers: int, config: GatewayConfig) -> str:
    """The one line printed at start: where it listens and what it forwards to (no secrets)."""
    plural = "s" if workers > 1 else ""
    where = _address(host, port)
    line = (
        f"messages-mw listening on {where}, {_describe_provider(config)}, {workers} worker{plural}"
    )
    if config.telemetry.prometheus:
        line += f", metrics at {where}{config.telemetry.metrics_path}"
    return line


def _address(host: str, port: int) -> str:
    shown_host = f"[{host}]" if ":" in host else host
    return f"http://{shown_host}:{port}"


def _try_listen(host: str, port: int) -> tuple[int, str | None]:
    """The port to listen on and why ``host:port`` cannot be listened on (``None``: it can),
    bound and let go the way uvicorn binds it. Asked before the start-up line, which would
    otherwise announce an address that uvicorn then fails to bind (a port in use) just before
    its own error. Port 0 becomes the free port the system chose, so that the line names the
    port clients can reach."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            return port, exc.strerror or str(exc)
        return sock.getsockname()[1], None


def _configure_logging(level: str) -> None:
    numeric = logging.DEBUG if level == "trace" else getattr(logging, level.upper())
    logging.basicConfig(format="%(levelname)s:     %(name)s: %(message)s")
    logging.getLogger("messages_mw").setLevel(numeric)
    # Usage events are data, not diagnostics: bare JSON lines on stdout, one per request.
    # They are written at INFO whatever --log-level says: it quiets diagnostics only.
    usage = logging.getLogger("messages_mw.usage")
    usage.setLevel(logging.INFO)
    if not usage.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        usage.addHandler(handler)
        usage.propagate = False


def _encode_worker_settings(settings: _WorkerSettings) -> str:
    # MessagePack, not JSON: JSON has no infinity (read_timeout = inf, "none") and would
    # hand every worker a null that fails the config it rebuilds, for ever, under uvicorn.
    return base64.b64encode(msgspec.msgpack.encode(settings)).decode("ascii")


def _decode_worker_settings(raw: str) -> _WorkerSettings:
    return msgspec.msgpack.decode(base64.b64decode(raw), type=_WorkerSettings)


def create_app() -> Gateway:
    """The uvicorn factory for worker processes (``--workers`` > 1).

    Called once per worker; rebuilds the gateway from the settings the parent serialized into
    the environment. Raises RuntimeError when started outside ``messages-mw serve``.
    """
    raw = os.environ.get(_WORKER_ENV)
    if raw is None:
        raise RuntimeError(f"{_WORKER_ENV} is not set; start workers with 'messages-mw serve'")
    settings = _decode_worker_settings(raw)
    _configure_logging(settings.log_level)
    gateway = Gateway(settings.config)
    tune_for_serving()
    return gateway


def serving_options(*, access_log: bool = False) -> dict[str, Any]:
    """The uvicorn options the gateway is served with (the benchmarks serve it so too).

    uvicorn's access log is off unless asked for: the usage log has a line per request with
    more in it, and uvicorn writes its line on the event loop, so a stalled reader of stdout
    (a log shipper that stopped) would stop every request. Its proxy-headers middleware
    rewrites the client address and scheme from ``X-Forwarded-*`` for that log alone (the
    gateway reads neither), so it runs only with the log: otherwise it would copy every
    request's headers into a dict for nothing. No ``Server`` header: it would tell every
    client that the gateway runs on uvicorn, which is the operator's business (the upstream's
    own is dropped too).
    """
    return {
        "http": _http_protocol(),
        "access_log": access_log,
        "proxy_headers": access_log,
        "server_header": False,
    }


def _http_protocol() -> Any:
    """The gateway's own HTTP/1.1 protocol (:mod:`messages_mw.server`), or uvicorn's choice
    when httptools is missing."""
    try:
        from .server import GatewayHttpProtocol
    except ImportError:
        return "auto"
    return GatewayHttpProtocol


def _serve(args: argparse.Namespace, config: GatewayConfig, gateway: Gateway) -> int:
    try:
        import uvicorn  # noqa: F401  (the server extra: run_uvicorn needs it)
    except ImportError:
        print(_INSTALL_HINT, file=sys.stderr)
        return 2
    port, problem = _try_listen(args.host, args.port)
    if problem is not None:
        where = _address(args.host, port)
        print(f"messages-mw: error: cannot listen on {where}: {problem}", file=sys.stderr)
        return _STARTUP_FAILURE
    print(_startup_line(args.host, port, args.workers, config), flush=True)
    if args.workers > 1 and config.limits.rules and config.limits.store == "memory":
        print(
            f"messages-mw: warning: each of the {args.workers} workers counts the limits in "
            "its own memory, so they hold that many times over; set [limits] store = "
            '"redis" to share one set of counters',
            file=sys.stderr,
            flush=True,
        )
    app: Gateway | str
    if args.workers > 1:
        # Each worker builds its own; this one only proved the configuration builds.
        asyncio.run(gateway.aclose())
        # Worker processes inherit the environment (where --api-key-env found the key anyway).
        settings = _WorkerSettings(config=config, log_level=args.log_level)
        os.environ[_WORKER_ENV] = _encode_worker_settings(settings)
        app = "messages_mw.cli:create_app"
    else:
        app = gateway
        tune_for_serving()
    options: dict[str, Any] = {
        "host": args.host,
        "port": port,
        "loop": "auto",
        "log_level": args.log_level,
        "timeout_graceful_shutdown": args.graceful_timeout,
        **serving_options(access_log=args.access_log),
    }
    return run_uvicorn(app, args.workers, options)


def run_uvicorn(app: Gateway | str, workers: int, options: dict[str, Any]) -> int:
    """Serve ``app`` (an import string of a factory with several workers) on uvicorn with
    ``options``; returns the exit status."""
    import uvicorn

    if workers > 1:
        uvicorn.run(app, workers=workers, factory=True, **options)
        return 0
    server = _server_class(uvicorn)(uvicorn.Config(app, **options))
    with contextlib.suppress(KeyboardInterrupt):  # a Ctrl-C uvicorn raises again at the end
        server.run()
    return 0 if server.started else _STARTUP_FAILURE


def _server_class(uvicorn: Any) -> Any:
    """uvicorn's server, ending a forced exit (a second Ctrl-C) the way its graceful one
    ends: uvicorn then leaves the requests under way running into the process's end and
    skips the lifespan shutdown, so no usage event of theirs was ever written."""

    class GatewayServer(uvicorn.Server):  # type: ignore[misc]
        async def shutdown(self, sockets: Any = None) -> None:
            await super().shutdown(sockets)
            if self.force_exit:
                await end_forced_exit(self.server_state.tasks, self.lifespan.shutdown)

    return GatewayServer


async def end_forced_exit(
    requests: Iterable[asyncio.Task[Any]], shutdown: Callable[[], Awaitable[None]]
) -> None:
    """Cancel ``requests``, each of which then records its usage, and run the lifespan
    ``shutdown`` (the gateway closes, delivering the usage events), each for at most
    :data:`FORCED_EXIT_SECONDS`."""
    tasks = list(requests)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks, timeout=FORCED_EXIT_SECONDS)
    try:
        async with asyncio.timeout(FORCED_EXIT_SECONDS):
            await shutdown()
    except TimeoutError:
        logger.warning(
            "the gateway did not close within %g s of a forced exit", FORCED_EXIT_SECONDS
        )


def _shared_metrics_dir(config: GatewayConfig, workers: int) -> str | None:
    """With several workers, each would count only its own requests, and a scrape reaches
    one of them: prometheus-client's multiprocess mode keeps every worker's counts in one
    directory, made here unless the environment names one. Returns the directory to remove
    at exit, if this made one."""
    if workers < 2 or not config.telemetry.prometheus or os.environ.get(_METRICS_DIR_ENV):
        return None
    directory = tempfile.mkdtemp(prefix="messages-mw-metrics-")
    os.environ[_METRICS_DIR_ENV] = directory
    return directory


def main(argv: Sequence[str] | None = None) -> int:
    """The ``messages-mw`` entry point; returns the exit status (2 for a bad config)."""
    args = parse_args(argv)
    try:
        config = build_config(args)
    except ConfigError as exc:
        print(f"messages-mw: error: {exc}", file=sys.stderr)
        return 2
    # Before the gateway: its usage log sink decides from the handlers where it may write.
    _configure_logging(args.log_level)
    # Before the gateway too: prometheus-client reads the directory when first imported.
    metrics_dir = _shared_metrics_dir(config, args.workers)
    try:
        return _build_and_serve(args, config)
    finally:
        if metrics_dir is not None:
            shutil.rmtree(metrics_dir, ignore_errors=True)
            os.environ.pop(_METRICS_DIR_ENV, None)


def _build_and_serve(args: argparse.Namespace, config: GatewayConfig) -> int:
    try:
        # Some mistakes show only when the gateway is built (a fallback target naming no
        # provider, a malformed key hash, an unwritable usage file). Built here, in the one
        # process, they end the command with one line instead of a traceback, or, with
        # --workers, instead of workers that crash and are restarted for ever.
        gateway = Gateway(config)
    except (ValueError, OSError, ImportError) as exc:
        # ImportError: a configured feature's optional package is missing (redis-py,
        # prometheus-client, opentelemetry-api).
        source = f"{args.config}: " if args.config else ""
        print(f"messages-mw: error: {source}{exc}", file=sys.stderr)
        return 2
    return _serve(args, config, gateway)
