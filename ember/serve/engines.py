"""What the server runs: an Ember engine, loaded from ``model.ember`` or built from ``model.onnx``.

The scheduler needs only the ``ModelEngine`` protocol, which ``ember.runtime.engine.Engine``
satisfies: input/output specs and ``create_context()`` (the scheduler's tests give it a Python
function instead). ONNX models are built at load with a profile over the batch dim
(1..max_batch_size) and the dims the config leaves dynamic, and the engine is cached under
``cache_dir`` by the content hash of the version folder and the build config.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol

import ember
from ember.errors import EmberError
from ember.plan.config import BuildConfig, Profile
from ember.serve.config import ModelConfig, TensorConfig
from ember.serve.errors import ModelConfigError

log = logging.getLogger("ember.serve")

MODEL_FILES = ("model.ember", "model.onnx")


class InferContext(Protocol):
    def infer(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...


class ModelEngine(Protocol):
    """An engine as the server sees it (``ember.runtime.engine.Engine`` is one)."""

    @property
    def inputs(self) -> Sequence[Any]: ...     # specs with name, dtype, shape[, min, max]

    @property
    def outputs(self) -> Sequence[Any]: ...

    def create_context(self) -> AbstractContextManager[InferContext]: ...


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ember/engines`` (``~/.cache/ember/engines``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ember" / "engines"


def find_model_file(version_dir: Path) -> Path:
    """``model.ember`` or ``model.onnx`` of a version folder (the engine file wins)."""
    for name in MODEL_FILES:
        if (version_dir / name).is_file():
            return version_dir / name
    raise ModelConfigError(f"{version_dir}: no {' or '.join(MODEL_FILES)}; put the model file in "
                           f"the version folder")


def load_engine(version_dir: Path, config: ModelConfig, cache_dir: Path) -> tuple[ModelEngine, Path | None]:
    """The engine of one version folder, built (and cached) if it is ONNX, and the engine's file
    (``model.ember`` or the cached build; ``None`` when the cache could not be written), which
    instance processes load."""
    path = find_model_file(version_dir)
    if path.suffix == ".ember":
        return ember.load(path), path
    build_config = onnx_build_config(path, config)
    key = content_hash(version_dir, build_config)
    cached = cache_dir / f"{config.name}-{version_dir.name}-{key[:20]}.ember"
    if cached.is_file():
        try:
            engine = ember.load(cached)
            log.info("model %s version %s: engine from cache %s", config.name, version_dir.name, cached)
            return engine, cached
        except EmberError as exc:
            log.warning("cached engine %s cannot be used (%s); rebuilding", cached, exc)
    log.info("model %s version %s: building %s", config.name, version_dir.name, path)
    engine = ember.build(str(path), build_config)
    return engine, cached if _save_atomically(engine, cached) else None


def _save_atomically(engine: Any, target: Path) -> bool:
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.tmp.ember")
        engine.save(tmp)
        os.replace(tmp, target)
        return True
    except OSError as exc:
        log.warning("could not cache the engine at %s (%s); it will be rebuilt next time", target, exc)
        return False


def content_hash(version_dir: Path, build_config: BuildConfig) -> str:
    """sha256 over every file of the version folder, the build config and Ember's version."""
    h = hashlib.sha256()
    h.update(json.dumps({"ember": ember.__version__, "config": build_config.to_json()},
                        sort_keys=True).encode())
    for f in sorted(p for p in version_dir.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(version_dir)).encode() + b"\0")
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def onnx_inputs(path: Path) -> list[tuple[str, tuple[int, ...]]]:
    """(name, dims with -1 for dynamic) of an ONNX model's graph inputs (initializers excluded)."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelConfigError(f"{path}: cannot read the ONNX model: {exc}") from exc
    inits = {i.name for i in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                     for d in vi.type.tensor_type.shape.dim)
        out.append((vi.name, dims))
    return out


def onnx_build_config(path: Path, config: ModelConfig) -> BuildConfig:
    """The ``BuildConfig`` for an ONNX model: fixed shapes or a profile per input."""
    declared = {t.name: t for t in config.inputs or ()}
    shapes: dict[str, tuple[int, ...]] = {}
    profiles: dict[str, Profile] = {}
    for name, dims in onnx_inputs(path):
        if config.inputs is not None and name not in declared:
            raise ModelConfigError(f"{config.source}: the ONNX model takes input {name!r}, which the "
                                   f"config's inputs do not list; list every input or none")
        rest = dims
        if config.max_batch_size > 0:
            if not dims or (dims[0] != -1 and not (dims[0] == 1 and config.max_batch_size == 1)):
                raise ModelConfigError(
                    f"{path}: input {name!r} has shape {list(dims)} with no dynamic batch dim, but "
                    f"max_batch_size is {config.max_batch_size}; export the model with a dynamic "
                    f"first axis or set max_batch_size: 0")
            rest = dims[1:]
        lo, opt, hi = _dim_ranges(name, rest, declared.get(name), config, path)
        if config.max_batch_size > 0:
            top = config.max_batch_size
            batching = config.dynamic_batching
            opt_b = max(batching.preferred_batch_sizes or (top,)) if batching else 1
            profiles[name] = Profile((1, *lo), (opt_b, *opt), (top, *hi))
        elif lo != hi:
            profiles[name] = Profile(lo, opt, hi)
        elif -1 in dims:
            shapes[name] = lo
    return BuildConfig(device=config.device, precision=config.precision, shapes=shapes, profiles=profiles)


def _dim_ranges(name: str, dims: tuple[int, ...], declared: TensorConfig | None,
                config: ModelConfig, path: Path) -> tuple[tuple[int, ...], ...]:
    """min/opt/max of the non-batch dims: the model's fixed dims, the config's, or its profile."""
    want = declared.dims if declared is not None and declared.dims is not None else dims
    if len(want) != len(dims):
        raise ModelConfigError(f"{config.source}: input {name!r} has shape {list(want)} in the config "
                               f"but {list(dims)} (without the batch dim) in {path.name}")
    for axis, (a, b) in enumerate(zip(dims, want)):
        if a != -1 and b != -1 and a != b:
            raise ModelConfigError(f"{config.source}: input {name!r} dim {axis} is {b} in the config but "
                                   f"{a} in {path.name}")
    fixed = tuple(a if a != -1 else b for a, b in zip(dims, want))
    if -1 not in fixed:
        return fixed, fixed, fixed
    profile = declared.profile if declared is not None else None
    if profile is None:
        raise ModelConfigError(
            f"{config.source}: input {name!r} has dynamic dims {list(fixed)} (without the batch dim); "
            f"give their range as profile: {{min: [...], opt: [...], max: [...]}} or fix them in shape")
    if len(profile[0]) != len(fixed):
        raise ModelConfigError(f"{config.source}: input {name!r} profile has {len(profile[0])} dims but the "
                               f"input has {len(fixed)} without the batch dim")
    for axis, d in enumerate(fixed):
        if d != -1 and not (profile[0][axis] == profile[2][axis] == d):
            raise ModelConfigError(f"{config.source}: input {name!r} profile does not keep dim {axis} "
                                   f"at its fixed size {d}")
    return profile
