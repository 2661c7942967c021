"""A served model's configuration: ``REPOSITORY/<model>/config.yaml`` (or ``config.json``).

>>> cfg = parse_config({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 500}},
...                    "resnet", "resnet/config.yaml")
>>> cfg.dynamic_batching.max_queue_delay_us
500

Keys (Triton's ``config.pbtxt`` spellings are accepted too, shown in brackets)::

    max_batch_size: 8            # 0: the model has no batch dimension and requests run alone
    device: cpu                  # cpu | cuda
    precision: fp32              # fp32 | tf32 | fp16 | bf16
    instance_count: 2            # [instance_group: [{count: 2}]] execution contexts in parallel
    instance_kind: auto          # auto | thread | process: where an instance runs (auto: a process
                                 # of its own for cuda, a thread of the server for cpu)
    inputs:                      # [input] optional: read from the engine when left out
      - name: input_ids
        datatype: INT64          # [data_type: TYPE_INT64]
        shape: [-1]              # [dims] without the batch dim; -1 is dynamic
        profile: {min: [1], opt: [128], max: [512]}   # range of the dynamic dims (ONNX builds)
    outputs: [...]               # [output] optional, same form without profile
    dynamic_batching:            # present: requests are batched together
      max_queue_delay_microseconds: 100
      preferred_batch_size: [4, 8]
      max_queue_size: 0          # 0: the server's --max-queue-size; a full queue answers 503
      default_timeout_microseconds: 0   # 0: the server's --request-timeout
      allow_timeout_override: true      # false: a request's own 'timeout' is ignored
      timeout_action: REJECT     # REJECT only: a request past its timeout answers 503
                                 # [default_queue_policy: {max_queue_size: ..., ...}], as Triton
      batch_buckets: auto        # auto | [1, 2, 4, 8] | []: batch sizes a batch is padded up to
    version_policy: latest       # latest | all | {latest: N} | {specific: [1, 3]}
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Optional, TypeVar

import yaml

from ember.plan.config import BUILDABLE_PRECISIONS, Device, Precision
from ember.serve.datatypes import parse_datatype
from ember.serve.errors import ModelConfigError, safe_text

CONFIG_FILES = ("config.yaml", "config.yml", "config.json")


@dataclass(frozen=True)
class TensorConfig:
    """One input or output: ``dims`` exclude the batch dim; -1 marks a dynamic dim."""

    name: str
    datatype: Optional[str] = None
    dims: Optional[tuple[int, ...]] = None
    profile: Optional[tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]] = None


@dataclass(frozen=True)
class BatchingConfig:
    """The dynamic batcher's settings (all times in microseconds)."""

    max_queue_delay_us: int = 0
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_size: int = 0
    default_timeout_us: int = 0
    #: whether a request's ``timeout`` parameter counts; with a ``default_timeout_us`` it may only
    #: shorten it (Triton's ``allow_timeout_override``)
    allow_timeout_override: bool = True
    #: sizes a gathered batch is padded up to (repeating its last row); ``None``: automatic
    #: (powers of two up to ``max_batch_size`` on CUDA, where each batch size is a CUDA graph
    #: captured once; none on the CPU); ``()``: never pad.
    batch_buckets: Optional[tuple[int, ...]] = None


@dataclass(frozen=True)
class VersionPolicy:
    """Which version folders to serve: the newest ``latest``, all, or ``specific`` ones."""

    kind: str = "latest"
    latest: int = 1
    specific: tuple[int, ...] = ()

    def select(self, available: list[int]) -> list[int]:
        """The versions to load out of the folders present, in increasing order."""
        ordered = sorted(available)
        if self.kind == "all":
            return ordered
        if self.kind == "specific":
            return [v for v in ordered if v in self.specific]
        return ordered[-self.latest:]


@dataclass(frozen=True)
class ModelConfig:
    """A model's configuration, validated and with Triton's spellings resolved."""

    name: str
    max_batch_size: int = 0
    device: Device = Device.CPU
    precision: Precision = Precision.FP32
    instance_count: int = 1
    instance_kind: str = "auto"
    inputs: Optional[tuple[TensorConfig, ...]] = None
    outputs: Optional[tuple[TensorConfig, ...]] = None
    dynamic_batching: Optional[BatchingConfig] = None
    version_policy: VersionPolicy = field(default_factory=VersionPolicy)
    source: str = ""

    @property
    def default_timeout_us(self) -> int:
        return self.dynamic_batching.default_timeout_us if self.dynamic_batching else 0

    @property
    def max_queue_size(self) -> int:
        return self.dynamic_batching.max_queue_size if self.dynamic_batching else 0


def find_config_file(model_dir: Path) -> Optional[Path]:
    """The config file of a model folder, or ``None`` when the folder has none."""
    for name in CONFIG_FILES:
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def read_config(model_dir: Path, replacement: Optional[Mapping[str, Any]] = None) -> ModelConfig:
    """Reads and validates ``model_dir/config.yaml|.yml|.json``, or ``replacement`` instead of it
    (the ``config`` parameter of a load request, as in Triton)."""
    if replacement is not None:
        return parse_config(dict(replacement), model_dir.name, f"the load request's config for {model_dir.name!r}")
    path = find_config_file(model_dir)
    if path is None:
        raise ModelConfigError(f"{model_dir}: no {' or '.join(CONFIG_FILES)}; add one (it may be "
                               f"empty) to serve this folder as a model")
    try:
        text = path.read_text()
        loaded = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise ModelConfigError(f"{path}: cannot read the model config: {exc}") from exc
    if loaded is not None and not isinstance(loaded, dict):
        raise ModelConfigError(f"{path}: the config must be a mapping of keys to values, "
                               f"got {type(loaded).__name__}")
    return parse_config(dict(loaded or {}), model_dir.name, str(path))


INSTANCE_KINDS = ("auto", "thread", "process")

_KEYS = {
    "name", "max_batch_size", "device", "precision", "instance_count", "instance_group", "instance_kind",
    "inputs", "input", "outputs", "output", "dynamic_batching", "version_policy", "platform",
    "backend",
}


def parse_config(data: Mapping[str, Any], folder: str, source: str) -> ModelConfig:
    """Validates a config mapping; ``folder`` is the model folder's name, ``source`` the file."""
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise ModelConfigError(f"{source}: unknown config keys {unknown}; known keys are {sorted(_KEYS)}")
    name = str(data.get("name", folder))
    if name != folder:
        raise ModelConfigError(f"{source}: config name {name!r} differs from its folder {folder!r}; "
                               f"rename one so they agree")
    max_bs = _int(data.get("max_batch_size", 0), "max_batch_size", source, minimum=0)
    device = _member(data.get("device", "cpu"), tuple(Device), "device", source)
    precision = _member(data.get("precision", "fp32"), BUILDABLE_PRECISIONS, "precision", source)
    batching = _batching(data.get("dynamic_batching"), max_bs, source)
    kind = str(data.get("instance_kind", "auto"))
    if kind not in INSTANCE_KINDS:
        raise ModelConfigError(f"{source}: instance_kind {kind!r} is not one of {', '.join(INSTANCE_KINDS)}")
    return ModelConfig(
        name=name, max_batch_size=max_bs, device=device, precision=precision,
        instance_count=_instance_count(data, source), instance_kind=kind,
        inputs=_tensors(data, "inputs", "input", source, with_profile=True),
        outputs=_tensors(data, "outputs", "output", source, with_profile=False),
        dynamic_batching=batching, version_policy=_version_policy(data.get("version_policy"), source),
        source=source)


E = TypeVar("E", Device, Precision)


def _member(value: Any, allowed: tuple[E, ...], key: str, source: str) -> E:
    """``value`` (a config file's spelling) as one of the ``allowed`` enum members; the error
    names the file, the key and the spellings it takes."""
    text = str(value)
    for member in allowed:
        if member.value == text:
            return member
    raise ModelConfigError(f"{source}: {key} {text!r} is not one of {', '.join(m.value for m in allowed)}")


_INT_MAX = 2**62  # larger numbers in a config are mistakes (and would overflow int64 arithmetic)


def _int(value: Any, key: str, source: str, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise ModelConfigError(f"{source}: {key} must be an integer >= {minimum}, got {safe_text(value)}")
    try:
        out = int(value)
    except ValueError:
        raise ModelConfigError(f"{source}: {key} must be an integer >= {minimum}, got {safe_text(value)}") from None
    if out < minimum:
        raise ModelConfigError(f"{source}: {key} must be an integer >= {minimum}, got {out}")
    if out > _INT_MAX:
        raise ModelConfigError(f"{source}: {key} must be at most 2**62, got {safe_text(out)}")
    return out


def _pick(data: Mapping[str, Any], key: str, alias: str, source: str) -> Any:
    if key in data and alias in data:
        raise ModelConfigError(f"{source}: give {key!r} or {alias!r}, not both")
    return data.get(key, data.get(alias))


def _instance_count(data: Mapping[str, Any], source: str) -> int:
    groups = data.get("instance_group")
    if groups is None:
        return _int(data.get("instance_count", 1), "instance_count", source, minimum=1)
    if "instance_count" in data:
        raise ModelConfigError(f"{source}: give instance_count or instance_group, not both")
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise ModelConfigError(f"{source}: instance_group must be a list of {{count: N}} mappings")
    return sum(_int(g.get("count", 1), "instance_group.count", source, minimum=1) for g in groups)


def _shape(value: Any, key: str, source: str) -> tuple[int, ...]:
    if not isinstance(value, (list, tuple)):
        raise ModelConfigError(f"{source}: {key} must be a list of dims (-1 for dynamic), got {value!r}")
    dims = tuple(_int(d, key, source, minimum=-1) for d in value)
    if 0 in dims:
        raise ModelConfigError(f"{source}: {key} {list(dims)} has a 0 dim; use -1 for a dynamic dim")
    return dims


def _tensors(data: Mapping[str, Any], key: str, alias: str, source: str,
             with_profile: bool) -> Optional[tuple[TensorConfig, ...]]:
    items = _pick(data, key, alias, source)
    if items is None:
        return None
    if not isinstance(items, list) or not all(isinstance(t, dict) and "name" in t for t in items):
        raise ModelConfigError(f"{source}: {key} must be a list of mappings, each with a name")
    allowed = {"name", "datatype", "data_type", "shape", "dims", "format"} | ({"profile"} if with_profile else set())
    out = []
    for item in items:
        where = f"{source}: {key[:-1]} {item['name']!r}"
        extra = sorted(set(item) - allowed)
        if extra:
            raise ModelConfigError(f"{where}: unknown keys {extra}; known keys are {sorted(allowed)}")
        dtype = _pick(item, "datatype", "data_type", where)
        dims = _pick(item, "shape", "dims", where)
        shape = None if dims is None else _shape(dims, "shape", where)
        out.append(TensorConfig(
            name=str(item["name"]), datatype=None if dtype is None else parse_datatype(dtype, where),
            dims=shape, profile=_profile(item.get("profile"), shape, where)))
    names = [t.name for t in out]
    if len(set(names)) != len(names):
        raise ModelConfigError(f"{source}: {key} names repeat: {names}")
    return tuple(out)


def _profile(value: Any, dims: Optional[tuple[int, ...]], where: str):
    if value is None:
        return None
    if not isinstance(value, dict) or set(value) != {"min", "opt", "max"}:
        raise ModelConfigError(f"{where}: profile must be {{min: [...], opt: [...], max: [...]}} over the "
                               f"dims without the batch dim")
    lo, mid, hi = (_shape(value[k], f"profile.{k}", where) for k in ("min", "opt", "max"))
    if dims is not None and not (len(lo) == len(mid) == len(hi) == len(dims)):
        raise ModelConfigError(f"{where}: profile min/opt/max must each have {len(dims)} dims like the shape")
    if not all(1 <= a <= b <= c for a, b, c in zip(lo, mid, hi)):
        raise ModelConfigError(f"{where}: profile needs 1 <= min <= opt <= max in every dim, got "
                               f"min={list(lo)} opt={list(mid)} max={list(hi)}")
    return lo, mid, hi


def _batching(value: Any, max_bs: int, source: str) -> Optional[BatchingConfig]:
    if value is None or value is False:
        return None
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ModelConfigError(f"{source}: dynamic_batching must be a mapping (or true), got {value!r}")
    if max_bs == 0:
        raise ModelConfigError(f"{source}: dynamic_batching needs max_batch_size > 0 (the model must "
                               f"have a batch dimension); set max_batch_size or remove dynamic_batching")
    policy = value.get("default_queue_policy") or {}
    if not isinstance(policy, dict):
        raise ModelConfigError(f"{source}: default_queue_policy must be a mapping of {sorted(_POLICY_KEYS)}, "
                               f"got {safe_text(policy)}")
    known = {"max_queue_delay_microseconds", "preferred_batch_size", "default_queue_policy",
             "batch_buckets"} | _POLICY_KEYS
    extra = sorted(set(value) - known) + sorted(set(policy) - _POLICY_KEYS)
    if extra:
        raise ModelConfigError(f"{source}: dynamic_batching has unknown keys {extra}; known keys are {sorted(known)} "
                               f"(default_queue_policy: {sorted(_POLICY_KEYS)}); priority levels are not supported")
    both = sorted(set(value) & set(policy))
    if both:
        raise ModelConfigError(f"{source}: give {both} in dynamic_batching or in its default_queue_policy, not both")
    merged = {**value, **policy}
    action = str(merged.get("timeout_action", "REJECT")).upper()
    if action != "REJECT":
        raise ModelConfigError(f"{source}: timeout_action {safe_text(merged.get('timeout_action'))} is not "
                               f"supported; Ember answers a request past its timeout at once (REJECT)")
    override = merged.get("allow_timeout_override", True)
    if not isinstance(override, bool):
        raise ModelConfigError(f"{source}: allow_timeout_override must be true or false, got {safe_text(override)}")
    preferred = merged.get("preferred_batch_size", [])
    preferred = [preferred] if isinstance(preferred, int) else preferred
    if not isinstance(preferred, list):
        raise ModelConfigError(f"{source}: preferred_batch_size must be a list of ints, got {preferred!r}")
    sizes = tuple(sorted({_int(p, "preferred_batch_size", source, minimum=1) for p in preferred}))
    if sizes and sizes[-1] > max_bs:
        raise ModelConfigError(f"{source}: preferred_batch_size {list(sizes)} exceeds max_batch_size {max_bs}")
    return BatchingConfig(
        max_queue_delay_us=_int(merged.get("max_queue_delay_microseconds", 0), "max_queue_delay_microseconds", source),
        preferred_batch_sizes=sizes,
        max_queue_size=_int(merged.get("max_queue_size", 0), "max_queue_size", source),
        default_timeout_us=_int(merged.get("default_timeout_microseconds", 0), "default_timeout_microseconds", source),
        allow_timeout_override=override,
        batch_buckets=_buckets(merged.get("batch_buckets", "auto"), max_bs, source))


#: Triton's ``ModelQueuePolicy`` fields (in ``dynamic_batching`` or its ``default_queue_policy``)
_POLICY_KEYS = frozenset({"max_queue_size", "default_timeout_microseconds", "allow_timeout_override",
                          "timeout_action"})


def _buckets(value: Any, max_bs: int, source: str) -> Optional[tuple[int, ...]]:
    if value is None or value == "auto":
        return None
    if value is False or value == "none":
        return ()
    if not isinstance(value, list):
        raise ModelConfigError(f"{source}: batch_buckets must be auto, none or a list of batch sizes, "
                               f"got {value!r}")
    sizes = tuple(sorted({_int(v, "batch_buckets", source, minimum=1) for v in value}))
    if sizes and sizes[-1] > max_bs:
        raise ModelConfigError(f"{source}: batch_buckets {list(sizes)} exceeds max_batch_size {max_bs}")
    return sizes


def _version_policy(value: Any, source: str) -> VersionPolicy:
    if value is None or value == "latest":
        return VersionPolicy()
    if value == "all" or (isinstance(value, dict) and "all" in value and len(value) == 1):
        return VersionPolicy(kind="all")
    if isinstance(value, dict) and len(value) == 1 and "latest" in value:
        n = value["latest"]
        n = n.get("num_versions", 1) if isinstance(n, dict) else n
        return VersionPolicy(kind="latest", latest=_int(n, "version_policy.latest", source, minimum=1))
    if isinstance(value, dict) and len(value) == 1 and "specific" in value:
        v = value["specific"]
        v = v.get("versions", []) if isinstance(v, dict) else v
        if not isinstance(v, list) or not v:
            raise ModelConfigError(f"{source}: version_policy.specific must be a non-empty list of versions")
        return VersionPolicy(kind="specific",
                             specific=tuple(_int(x, "version_policy.specific", source, minimum=1) for x in v))
    raise ModelConfigError(f"{source}: version_policy must be latest, all, {{latest: N}} or "
                           f"{{specific: [versions]}}, got {value!r}")
