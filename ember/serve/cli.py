"""``ember serve REPOSITORY``: the command-line layer over ``ember.serve.run_server``.

``add_arguments(parser)`` fills an argparse parser (``ember/cli.py`` registers it as the
``serve`` subcommand); ``run(args)`` serves until SIGINT/SIGTERM and returns the exit status.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

from ember.errors import EmberError

HELP = "serve models over HTTP and gRPC (KServe v2, Triton-compatible) with dynamic batching"
DESCRIPTION = ("Serve the models of a repository over the KServe v2 / Open Inference Protocol "
               "(HTTP and gRPC, as Triton Inference Server does), with dynamic batching and "
               "Prometheus metrics.")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds ``ember serve``'s arguments to ``parser``."""
    parser.add_argument("repository", help="model repository: REPOSITORY/<model>/config.yaml and "
                                           "REPOSITORY/<model>/<version>/model.onnx|model.ember")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; "
                                                            "0.0.0.0 for every interface)")
    parser.add_argument("--http-port", type=int, default=8000, help="HTTP/REST port (default 8000; "
                                                                    "0: any free port, -1: off)")
    parser.add_argument("--grpc-port", type=int, default=8001, help="gRPC port (default 8001)")
    parser.add_argument("--metrics-port", type=int, default=8002, help="Prometheus /metrics port "
                                                                       "(default 8002)")
    parser.add_argument("--cache-dir", default=None, help="where engines built from ONNX are cached "
                                                          "(default ~/.cache/ember/engines)")
    parser.add_argument("--shutdown-timeout", type=float, default=60.0,
                        help="seconds to wait for in-flight requests on shutdown (default 60)")
    parser.add_argument("--grpc-front-ends", default="auto",
                        help="processes that serve the gRPC port and relay calls to the server "
                             "process, so gRPC's per-call work does not compete with batching and "
                             "the models (default auto: a quarter of the CPUs, at most 4, none "
                             "below 8 CPUs; 0: the server process serves gRPC itself)")
    parser.add_argument("--grpc-staging-mb", type=int, default=32,
                        help="shared memory per gRPC front end, in MiB, for the input tensors of "
                             "large requests: the server process and the model instances read them "
                             "there instead of receiving copies (default 32; 0: off)")
    parser.add_argument("--model-control-mode", default="none", choices=["none", "explicit"],
                        help="none (default): serve the models loaded at start-up, refuse load and "
                             "unload requests (403); explicit: clients may load and unload models")
    parser.add_argument("--model-control-token", default=None,
                        help="with explicit model control: loads and unloads must send "
                             "'Authorization: Bearer TOKEN' (HTTP header or gRPC metadata); default "
                             "the EMBER_MODEL_CONTROL_TOKEN environment variable, else no token")
    parser.add_argument("--exit-on-error", action="store_true",
                        help="stop at start-up when a model fails to load (default: report it as "
                             "UNAVAILABLE with the reason and serve the other models)")
    limits = parser.add_argument_group("request limits (a request over one is refused with 4xx)")
    limits.add_argument("--http-max-body-mb", type=float, default=256,
                        help="largest HTTP request body, as sent (default 256 MiB; 413 beyond)")
    limits.add_argument("--max-decompressed-mb", type=float, default=256,
                        help="largest HTTP body once gzip/deflate is undone, checked while "
                             "inflating (default 256 MiB; 413 beyond)")
    limits.add_argument("--grpc-max-message-mb", type=float, default=256,
                        help="largest gRPC message received or sent (default 256 MiB; "
                             "RESOURCE_EXHAUSTED beyond)")
    limits.add_argument("--max-json-depth", type=int, default=64,
                        help="deepest nesting of an HTTP request's JSON (default 64)")
    limits.add_argument("--max-input-dims", type=int, default=16,
                        help="most dims of one input tensor (default 16)")
    limits.add_argument("--max-input-elements", type=int, default=2**31 - 1,
                        help="most elements of one input tensor, zero dims counted as 1 "
                             "(default 2**31-1)")
    limits.add_argument("--max-queue-size", type=int, default=4096,
                        help="requests a model's queue holds when its config sets no "
                             "max_queue_size (default 4096; 0: unbounded); a full queue answers 503")
    limits.add_argument("--http-max-connections", type=int, default=2048,
                        help="open HTTP connections plus requests in progress; past it new requests "
                             "answer 503 (default 2048)")
    limits.add_argument("--http-header-timeout", type=float, default=30.0,
                        help="seconds a connection may take to send a request's headers; then it is "
                             "closed (default 30)")
    limits.add_argument("--http-keep-alive-timeout", type=float, default=5.0,
                        help="seconds an idle kept-alive HTTP connection stays open (default 5)")
    limits.add_argument("--http-body-timeout", type=float, default=60.0,
                        help="seconds a request body may take to arrive after its headers; then the "
                             "request is answered 408 and the connection closed (default 60)")
    limits.add_argument("--request-timeout", type=float, default=60.0,
                        help="seconds a request may wait in a model's queue when neither the request "
                             "('timeout' parameter) nor the model config (default_timeout_microseconds) "
                             "sets it; then it is answered 503 / UNAVAILABLE (default 60; 0: no limit)")
    limits.add_argument("--grpc-handshake-timeout", type=float, default=30.0,
                        help="seconds a gRPC connection may take to open its HTTP/2 session (default 30)")
    limits.add_argument("--grpc-idle-timeout", type=float, default=300.0,
                        help="seconds an idle gRPC connection stays open; clients reconnect on their "
                             "own (default 300)")
    limits.add_argument("--grpc-max-connection-age", type=float, default=3600.0,
                        help="seconds before a gRPC connection is asked to reconnect, which bounds how "
                             "long a client dripping a message holds it (default 3600; 0: no limit)")
    limits.add_argument("--grpc-connection-grace", type=float, default=60.0,
                        help="seconds calls in progress get once their connection is past its age "
                             "(default 60)")
    limits.add_argument("--grpc-max-concurrent-rpcs", type=int, default=2048,
                        help="gRPC calls in progress at once per process; past it new calls answer "
                             "RESOURCE_EXHAUSTED (default 2048)")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.add_argument("--switch-interval-us", type=int, default=50,
                        help="Python's thread switch interval in microseconds (default 50; Python's "
                             "own is 5000): how long a model instance thread may wait for the "
                             "interpreter while the network thread decodes requests")


def run(args: argparse.Namespace) -> int:
    """Runs the server until SIGINT/SIGTERM; 0 on a clean stop, 1 if it could not start."""
    try:
        from ember.serve.server import ServerOptions, run_server
    except ImportError as exc:
        print(f"error: ember serve needs fastapi, uvicorn, grpcio, protobuf and prometheus-client "
              f"({exc}); install them with: pip install fastapi uvicorn grpcio protobuf prometheus-client",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.switch_interval_us <= 0:
        print(f"error: --switch-interval-us must be > 0, got {args.switch_interval_us}", file=sys.stderr)
        return 2
    if args.grpc_staging_mb < 0:
        print(f"error: --grpc-staging-mb must be >= 0, got {args.grpc_staging_mb}", file=sys.stderr)
        return 2
    limits = limits_from_args(args)
    if isinstance(limits, str):
        print(f"error: {limits}", file=sys.stderr)
        return 2
    token = args.model_control_token or os.environ.get("EMBER_MODEL_CONTROL_TOKEN") or None
    front_ends = _front_ends(args.grpc_front_ends)
    if front_ends is None:
        print(f"error: --grpc-front-ends must be auto or a whole number >= 0, got "
              f"{args.grpc_front_ends!r}", file=sys.stderr)
        return 2
    # An instance thread gives up the interpreter lock around every GPU call and must get it back
    # to go on; with Python's default 5 ms switch interval it waits that long whenever the event
    # loop is busy decoding requests, which multiplied a batch's compute time under load.
    sys.setswitchinterval(args.switch_interval_us / 1e6)
    options = ServerOptions(repository=args.repository, host=args.host, http_port=args.http_port,
                            grpc_port=args.grpc_port, metrics_port=args.metrics_port,
                            cache_dir=args.cache_dir, shutdown_timeout_s=args.shutdown_timeout,
                            log_level=args.log_level, grpc_front_ends=front_ends,
                            grpc_staging_mb=args.grpc_staging_mb, limits=limits,
                            model_control_mode=args.model_control_mode, model_control_token=token,
                            exit_on_error=args.exit_on_error)
    try:
        run_server(options)
    except (EmberError, OSError) as exc:
        logging.getLogger("ember.serve").error("ember serve: %s", exc)
        return 1
    return 0


def limits_from_args(args: argparse.Namespace):
    """The ``Limits`` of the flags, or a message naming the flag that is out of range (also what
    ``ember serve --ray`` serves with: ``ember.integrations.ray.cli``)."""
    from ember.serve.limits import Limits, MiB

    sizes = {"--http-max-body-mb": args.http_max_body_mb, "--max-decompressed-mb": args.max_decompressed_mb,
             "--grpc-max-message-mb": args.grpc_max_message_mb}
    counts = {"--max-json-depth": args.max_json_depth, "--max-input-dims": args.max_input_dims,
              "--max-input-elements": args.max_input_elements,
              "--http-max-connections": args.http_max_connections,
              "--http-header-timeout": args.http_header_timeout,
              "--http-keep-alive-timeout": args.http_keep_alive_timeout,
              "--http-body-timeout": args.http_body_timeout,
              "--grpc-handshake-timeout": args.grpc_handshake_timeout,
              "--grpc-idle-timeout": args.grpc_idle_timeout,
              "--grpc-connection-grace": args.grpc_connection_grace,
              "--grpc-max-concurrent-rpcs": args.grpc_max_concurrent_rpcs}
    for flag, value in {**sizes, **counts}.items():
        if not value > 0:
            return f"{flag} must be > 0, got {value}"
    if args.grpc_max_message_mb * MiB > 2**31 - 1:
        return f"--grpc-max-message-mb must be below 2048 (gRPC's own limit), got {args.grpc_max_message_mb}"
    for flag, value in {"--max-queue-size": args.max_queue_size, "--request-timeout": args.request_timeout,
                        "--grpc-max-connection-age": args.grpc_max_connection_age}.items():
        if not value >= 0:
            return f"{flag} must be >= 0, got {value}"
    return Limits(max_body_bytes=int(args.http_max_body_mb * MiB),
                  max_decompressed_bytes=int(args.max_decompressed_mb * MiB),
                  grpc_max_message_bytes=int(args.grpc_max_message_mb * MiB),
                  max_json_depth=args.max_json_depth, max_input_dims=args.max_input_dims,
                  max_input_elements=args.max_input_elements, max_queue_size=args.max_queue_size,
                  http_max_connections=args.http_max_connections,
                  http_header_timeout_s=args.http_header_timeout,
                  http_keep_alive_s=args.http_keep_alive_timeout,
                  http_body_timeout_s=args.http_body_timeout, request_timeout_s=args.request_timeout,
                  grpc_handshake_timeout_s=args.grpc_handshake_timeout,
                  grpc_idle_timeout_s=args.grpc_idle_timeout,
                  grpc_max_connection_age_s=args.grpc_max_connection_age,
                  grpc_connection_grace_s=args.grpc_connection_grace,
                  grpc_max_concurrent_rpcs=args.grpc_max_concurrent_rpcs)


def _front_ends(value: str) -> int | None:
    from ember.serve.relay.hub import auto_front_ends

    if value == "auto":
        return auto_front_ends()
    try:
        n = int(value)
    except ValueError:
        return None
    return n if n >= 0 else None


def main(argv: list[str] | None = None) -> int:
    """``python -m ember.serve REPOSITORY ...``"""
    parser = argparse.ArgumentParser(prog="ember serve", description=DESCRIPTION)
    add_arguments(parser)
    return run(parser.parse_args(argv))
