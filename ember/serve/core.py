"""What the HTTP and gRPC front ends share: server state, metadata, model config, inference.

The front ends only translate between their wire format and these calls, so both protocols
answer the same way and count requests the same way.
"""
from __future__ import annotations

import hmac
import time
from typing import Optional

import ember
from ember.serve.batcher import Feeds
from ember.serve.datatypes import triton_name
from ember.serve.errors import BadRequestError, ModelControlError, UnauthenticatedError, UnavailableError
from ember.serve.limits import DEFAULT_LIMITS, Limits
from ember.serve.repository import ModelRepository, ServedModel

SERVER_NAME = "ember"
EXTENSIONS = ("binary_tensor_data", "model_repository", "statistics", "model_configuration",
              "schedule_policy")
PLATFORM = "ember"
#: ``--model-control-mode`` values, as Triton spells them: ``none`` serves what start-up loaded,
#: ``explicit`` lets clients load and unload models
MODEL_CONTROL_MODES = ("none", "explicit")


class Core:
    """Server state shared by the front ends."""

    def __init__(self, repository: ModelRepository, limits: Limits = DEFAULT_LIMITS,
                 model_control_mode: str = "none", model_control_token: Optional[str] = None) -> None:
        if model_control_mode not in MODEL_CONTROL_MODES:
            raise ValueError(f"model control mode must be one of {', '.join(MODEL_CONTROL_MODES)}, "
                             f"got {model_control_mode!r}")
        self.repository = repository
        self.limits = limits
        self.model_control_mode = model_control_mode
        self.model_control_token = model_control_token or None
        self.accepting = True
        self.started = False

    # ---- model control ------------------------------------------------------------------
    def check_model_control(self, authorization: Optional[str]) -> None:
        """Refuses a load or unload unless model control is on and, when the server has a token,
        the request carries it (``Authorization: Bearer <token>``, HTTP header or gRPC metadata,
        which the gRPC front ends relay with the call)."""
        if self.model_control_mode != "explicit":
            raise ModelControlError("loading and unloading models is turned off on this server "
                                    "(--model-control-mode none)")
        token = self.model_control_token
        if token is None:
            return
        given = (authorization or "").strip()
        if given[:7].lower() == "bearer ":
            given = given[7:].strip()
        if not hmac.compare_digest(given.encode("utf-8", "backslashreplace"), token.encode()):
            raise UnauthenticatedError("model control needs the server's token: send the header "
                                       "'Authorization: Bearer <token>'")

    # ---- health and metadata --------------------------------------------------------------
    def live(self) -> bool:
        return True

    def ready(self) -> bool:
        """Ready once started, while not shutting down, and when no model failed to load."""
        return self.started and self.accepting and not self.repository.failed()

    def server_metadata(self) -> dict:
        return {"name": SERVER_NAME, "version": ember.__version__, "extensions": list(EXTENSIONS)}

    def model_metadata(self, name: str, version: str = "") -> dict:
        m = self.repository.get(name, version)
        sig = m.signature
        versions = sorted((s.version for s in self.repository.served() if s.name == name), key=int)
        return {
            "name": name, "versions": versions, "platform": PLATFORM,
            "inputs": [{"name": t.name, "datatype": t.datatype, "shape": sig.full_shape(t)} for t in sig.inputs],
            "outputs": [{"name": t.name, "datatype": t.datatype, "shape": sig.full_shape(t)} for t in sig.outputs],
        }

    def model_config(self, name: str, version: str = "") -> dict:
        """The model's configuration in the JSON form of Triton's ``ModelConfig`` message."""
        m = self.repository.get(name, version)
        cfg, sig = m.config, m.signature
        out = {
            "name": name, "platform": PLATFORM, "backend": PLATFORM, "max_batch_size": cfg.max_batch_size,
            "version_policy": _version_policy_json(cfg),
            "input": [{"name": t.name, "data_type": triton_name(t.datatype), "format": "FORMAT_NONE",
                       "dims": list(t.dims)} for t in sig.inputs],
            "output": [{"name": t.name, "data_type": triton_name(t.datatype), "dims": list(t.dims)}
                       for t in sig.outputs],
            "instance_group": [{"name": f"{name}_0", "kind": "KIND_GPU" if cfg.device == "cuda" else "KIND_CPU",
                                "count": cfg.instance_count, **({"gpus": [0]} if cfg.device == "cuda" else {})}],
            "default_model_filename": m.model_file,
            "parameters": {"device": {"string_value": cfg.device},
                           "precision": {"string_value": cfg.precision}},
        }
        b = cfg.dynamic_batching
        if b is not None:  # the queue policy in force: the server's defaults filled in
            out["dynamic_batching"] = {
                "preferred_batch_size": list(b.preferred_batch_sizes),
                "max_queue_delay_microseconds": b.max_queue_delay_us,
                "default_queue_policy": {"max_queue_size": m.scheduler.max_queue_size,
                                         "default_timeout_microseconds": m.scheduler.default_timeout_us,
                                         "allow_timeout_override": b.allow_timeout_override,
                                         "timeout_action": "REJECT"},
            }
        return out

    def statistics(self, name: str = "", version: str = "") -> dict:
        """``{"model_stats": [...]}`` for one model (version) or, with no name, every model."""
        if not name:
            return {"model_stats": [m.stats.to_json() for m in self.repository.served()]}
        if version:
            return {"model_stats": [self.repository.get(name, version).stats.to_json()]}
        self.repository.get(name)
        return {"model_stats": [m.stats.to_json() for m in self.repository.served() if m.name == name]}

    # ---- inference ----------------------------------------------------------------------
    def model_for_infer(self, name: str, version: str = "") -> ServedModel:
        """The model a request goes to; refuses while the server shuts down."""
        if not self.accepting:
            raise UnavailableError("the server is shutting down and accepts no new requests; retry on "
                                   "another server")
        return self.repository.get(name, version)

    async def infer(self, model: ServedModel, feeds: Feeds, requested: Optional[list[str]],
                    timeout_us: Optional[int]) -> Feeds:
        """Runs one request; returns the requested outputs (every output when ``requested`` is None)."""
        names = model.signature.output_names()
        if requested is not None:
            unknown = [n for n in requested if n not in names]
            if unknown:
                raise BadRequestError(f"model '{model.name}' has no output '{unknown[0]}'; its outputs are "
                                      f"{', '.join(names)}")
        outputs = await model.infer(feeds, timeout_us)
        return {n: outputs[n] for n in (requested if requested is not None else names)}


def now_ns() -> int:
    return time.perf_counter_ns()


def _version_policy_json(cfg) -> dict:
    p = cfg.version_policy
    if p.kind == "all":
        return {"all": {}}
    if p.kind == "specific":
        return {"specific": {"versions": list(p.specific)}}
    return {"latest": {"num_versions": p.latest}}


def parse_timeout(value: object) -> Optional[int]:
    """A request's ``timeout`` parameter (microseconds), validated."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequestError(f"request parameter 'timeout' must be a non-negative integer of "
                              f"microseconds, got {value!r}")
    return value
