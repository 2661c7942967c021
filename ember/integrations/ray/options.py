"""How many replicas of a model Ray Serve runs, and what each one holds (no Ray needed here).

>>> RayServeOptions(replicas=2).deployment_options(max_batch_size=8, device="cpu")["num_replicas"]
2
>>> RayServeOptions(min_replicas=1, max_replicas=4).deployment_options(8, "cpu")["autoscaling_config"]["max_replicas"]
4
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from ember.errors import EmberError
from ember.serve.limits import DEFAULT_LIMITS, Limits


class RayOptionsError(EmberError):
    """An option of the Ray integration is out of range or contradicts another."""


def request_timeout(seconds: Optional[float]) -> Optional[float]:
    """Serve's end-to-end request limit as its HTTP proxy takes it (``None``: no limit); anything
    but a positive, finite number of seconds is refused."""
    if seconds is None:
        return None
    if not math.isfinite(seconds) or not seconds > 0:
        raise RayOptionsError(f"the request timeout (--request-timeout-s, request_timeout_s=) must be a positive "
                              f"number of seconds, got {seconds!r}; leave it out for no limit")
    return float(seconds)


@dataclass(frozen=True)
class RayServeOptions:
    """Options of each model's Serve deployment.

    ``replicas``: a fixed number of replicas, or, with ``min_replicas``/``max_replicas``, Serve's
    autoscaling between those bounds (``target_ongoing_requests`` per replica, Serve's default
    when ``None``). ``num_gpus``: GPUs per replica (default 1 for a CUDA model: one engine per
    GPU; 0 for a CPU model). ``num_cpus``: CPUs Ray reserves per replica, which is also how many
    threads its engine computes with on the CPU. ``max_ongoing_requests``: requests one replica
    holds at once (default: enough to fill four batches, at least 32); the rest wait in Serve's
    router for a replica with room. ``access_log``: Serve's log line per request.
    """

    replicas: int = 1
    min_replicas: Optional[int] = None
    max_replicas: Optional[int] = None
    target_ongoing_requests: Optional[float] = None
    num_gpus: Optional[float] = None
    num_cpus: float = 1.0
    max_ongoing_requests: Optional[int] = None
    #: Serve's log line per request in each replica (off: it costs CPU on every request)
    access_log: bool = False
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise RayOptionsError(f"replicas must be >= 1, got {self.replicas}")
        lo, hi = self.min_replicas, self.max_replicas
        if (lo is None) != (hi is None):
            raise RayOptionsError("autoscaling needs both min_replicas and max_replicas (--min-replicas, "
                                  f"--max-replicas); got min {lo}, max {hi}")
        if lo is not None and hi is not None and not 0 <= lo <= hi or hi == 0:
            raise RayOptionsError(f"autoscaling needs 0 <= min_replicas <= max_replicas and max_replicas >= 1, "
                                  f"got min {lo}, max {hi}")
        if self.target_ongoing_requests is not None and self.target_ongoing_requests <= 0:
            raise RayOptionsError(f"target_ongoing_requests must be > 0, got {self.target_ongoing_requests}")
        if self.num_gpus is not None and self.num_gpus < 0:
            raise RayOptionsError(f"num_gpus must be >= 0, got {self.num_gpus}")
        if self.num_cpus < 0:
            raise RayOptionsError(f"num_cpus must be >= 0, got {self.num_cpus}")
        if self.max_ongoing_requests is not None and self.max_ongoing_requests < 1:
            raise RayOptionsError(f"max_ongoing_requests must be >= 1, got {self.max_ongoing_requests}")

    @property
    def autoscaling(self) -> bool:
        return self.min_replicas is not None

    def gpus_for(self, device: str) -> float:
        """GPUs per replica for a model on ``device``; a CUDA model needs at least one."""
        gpus = self.num_gpus if self.num_gpus is not None else (1.0 if device == "cuda" else 0.0)
        if device == "cuda" and gpus <= 0:
            raise RayOptionsError("a cuda model needs a GPU per replica; set num_gpus (--num-gpus) >= 1, "
                                  "or a fraction to share one GPU between replicas")
        return gpus

    def deployment_options(self, max_batch_size: int, device: str) -> dict[str, Any]:
        """Keyword arguments of ``Deployment.options`` for a model with this ``max_batch_size``."""
        ongoing = self.max_ongoing_requests or max(32, 4 * max(max_batch_size, 1))
        out: dict[str, Any] = {
            "max_ongoing_requests": ongoing,
            "ray_actor_options": {"num_cpus": self.num_cpus, "num_gpus": self.gpus_for(device)},
            "logging_config": {"enable_access_log": self.access_log},
        }
        if self.autoscaling:
            scaling: dict[str, Any] = {"min_replicas": self.min_replicas, "max_replicas": self.max_replicas,
                                       "initial_replicas": max(self.min_replicas or 0, 1)}
            if self.target_ongoing_requests is not None:
                scaling["target_ongoing_requests"] = self.target_ongoing_requests
            out["autoscaling_config"] = scaling
        else:
            out["num_replicas"] = self.replicas
        return out
