"""``ember serve REPOSITORY --ray [--replicas N]``: the repository on Ray Serve instead of one process.

``ember/cli.py`` wraps ``ember serve``'s own arguments and runner with ``with_ray_arguments``
and ``with_ray_run``: the flags below join ``ember serve``'s, and ``--ray`` routes the command
here. Only ``--host`` and ``--http-port`` of ``ember serve``'s flags apply under Ray (Serve's
HTTP proxy listens there), with ``--cache-dir``, ``--exit-on-error``, ``--log-level`` and the
request-size limits. Importing this module imports no Ray.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Callable, Optional

from ember.serve.cli import limits_from_args

if TYPE_CHECKING:
    pass

AddArguments = Callable[[argparse.ArgumentParser], None]
Run = Callable[[argparse.Namespace], int]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Adds the ``--ray`` flags to ``ember serve``'s parser."""
    group = parser.add_argument_group("Ray Serve (--ray): replicas of each model on a Ray cluster")
    group.add_argument("--ray", action="store_true",
                       help="serve the repository on Ray Serve: each model is an application whose replicas "
                            "each hold one engine; HTTP only (KServe v2), at --host:--http-port")
    group.add_argument("--ray-address", default=None,
                       help="Ray cluster to join (e.g. auto, or ray://head:10001); default: start a local one")
    group.add_argument("--replicas", type=int, default=None, help="replicas per model (default 1)")
    group.add_argument("--min-replicas", type=int, default=None,
                       help="with --max-replicas: autoscale each model between these bounds")
    group.add_argument("--max-replicas", type=int, default=None, help="see --min-replicas")
    group.add_argument("--num-gpus", type=float, default=None,
                       help="GPUs per replica (default 1 for a cuda model, one engine per GPU; 0 for cpu)")
    group.add_argument("--num-cpus", type=float, default=1.0,
                       help="CPUs Ray reserves per replica, also the threads of a CPU engine (default 1)")
    group.add_argument("--request-timeout-s", type=float, default=None,
                       help="answer a request still unanswered after this many seconds with HTTP 408 (Serve's "
                            "end-to-end timeout; a request routed to a replica that died meanwhile gets an answer "
                            "in bounded time and can be sent again); default: no limit")


def with_ray_arguments(add: AddArguments) -> AddArguments:
    """``add`` followed by ``add_arguments``."""
    def both(parser: argparse.ArgumentParser) -> None:
        add(parser)
        add_arguments(parser)
    return both


def with_ray_run(run: Run) -> Run:
    """``run``, or ``run_ray`` when ``--ray`` is given."""
    def route(args: argparse.Namespace) -> int:
        if getattr(args, "ray", False):
            return run_ray(args)
        flags = [f for f, v in (("--replicas", args.replicas), ("--min-replicas", args.min_replicas),
                                ("--max-replicas", args.max_replicas), ("--num-gpus", args.num_gpus),
                                ("--request-timeout-s", args.request_timeout_s),
                                ("--ray-address", args.ray_address)) if v is not None]
        if flags:
            print(f"error: {', '.join(flags)} only apply with --ray; add --ray", file=sys.stderr)
            return 2
        return run(args)
    return route


def run_ray(args: argparse.Namespace, stop: Optional[threading.Event] = None) -> int:
    """Deploys the repository and serves until SIGINT/SIGTERM (or ``stop``); then removes its
    applications (and stops the local cluster it started)."""
    try:
        import ray  # type: ignore[import-not-found]
        from ray import serve  # type: ignore[import-not-found]

        from ember.integrations.ray.options import RayOptionsError, RayServeOptions, request_timeout
        from ember.integrations.ray.serve import deploy_repository, undeploy_repository
    except ImportError as exc:
        print(f"error: ember serve --ray needs Ray Serve ({exc}); install it with: pip install 'ember[ray]'",
              file=sys.stderr)
        return 1
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(message)s")
    if args.http_port <= 0:
        print(f"error: --ray needs a fixed --http-port (Serve's proxy port), got {args.http_port}", file=sys.stderr)
        return 2
    limits = limits_from_args(args)  # the same flags and checks as ember serve
    if isinstance(limits, str):
        print(f"error: {limits}", file=sys.stderr)
        return 2
    try:
        options = RayServeOptions(replicas=args.replicas or 1, min_replicas=args.min_replicas,
                                  max_replicas=args.max_replicas, num_gpus=args.num_gpus,
                                  num_cpus=args.num_cpus, limits=limits)
        timeout = request_timeout(args.request_timeout_s)
    except RayOptionsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    stop = stop or threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        if threading.current_thread() is threading.main_thread():
            signal.signal(sig, lambda *_: stop.set())
    started_here = not ray.is_initialized() and args.ray_address is None
    states = deploy_repository(args.repository, options, address=args.ray_address, host=args.host,
                               port=args.http_port, cache_dir=args.cache_dir, exit_on_error=args.exit_on_error,
                               request_timeout_s=timeout)
    log = logging.getLogger("ember.integrations.ray")
    for name, state in states.items():
        log.info("model %s: %s", name, state)
    log.info("serving on Ray Serve at http://%s:%d (KServe v2 over HTTP); Ctrl-C stops", args.host, args.http_port)
    try:
        stop.wait()
    finally:
        undeploy_repository(states)
        if started_here:
            serve.shutdown()
            ray.shutdown()
    return 0
