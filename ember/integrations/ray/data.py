"""``EmberPredictor``: an Ember engine inside Ray Data batch inference.

>>> import ray
>>> from ember.integrations.ray import EmberPredictor
>>> ds = ray.data.read_parquet("tokens.parquet")                                   # doctest: +SKIP
>>> out = ds.map_batches(EmberPredictor, fn_constructor_kwargs={"engine": "minilm.ember"},
...                      concurrency=2, batch_size=64)                              # doctest: +SKIP

Ray makes ``concurrency`` actors; each loads the engine once and then maps batches, NumPy
(``dict`` of column arrays, Ray Data's default) or pandas (``batch_format="pandas"``): the
columns named like the engine's inputs (or mapped with ``columns=``) go in, the outputs come back
as columns, beside the batch's other columns (``keep_columns``). A batch larger than the engine
takes is run in slices of the largest batch it takes (padded to its size for an engine built
for one fixed batch). A CUDA engine wants ``num_gpus=1`` in ``map_batches``: one engine per GPU.

Nothing here imports Ray: the class is a plain callable, usable and testable without a cluster.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence, Union

import numpy as np

import ember
from ember.errors import EmberError, EngineFileError, InputError

Batch = Union[dict[str, np.ndarray], Any]  # a dict of column arrays, or a pandas.DataFrame


class EmberPredictor:
    """Maps batches of rows through an engine (see the module docstring).

    ``engine``: an engine file (``ember build model.onnx -o model.ember``). ``columns``: column
    -> input name, for columns not named like the inputs. ``outputs``: the outputs to return
    (default all); ``output_columns``: output -> column name. ``keep_columns``: True keeps every
    column of the batch beside the outputs, False none, a list those named.
    """

    def __init__(self, engine: Union[str, os.PathLike[str]], *, columns: Optional[Mapping[str, str]] = None,
                 outputs: Optional[Sequence[str]] = None, output_columns: Optional[Mapping[str, str]] = None,
                 keep_columns: Union[bool, Sequence[str]] = True) -> None:
        self.path = Path(engine)
        if self.path.suffix != ".ember":
            raise EngineFileError(f"EmberPredictor: {self.path} is not an engine file; build one first "
                                  f"(ember build {self.path} -o {self.path.with_suffix('.ember').name}) and "
                                  f"give its path")
        self.engine = ember.load(self.path)
        self.specs = {s.name: s for s in self.engine.inputs}
        out_names = [s.name for s in self.engine.outputs]
        self.columns = dict(columns or {})
        unknown = sorted(set(self.columns.values()) - set(self.specs))
        if unknown:
            raise InputError(f"EmberPredictor({self.path.name}): columns= maps to {unknown}, which the engine "
                             f"does not take; its inputs are {sorted(self.specs)}")
        self.input_columns = {name: self._column_of(name) for name in self.specs}
        self.outputs = list(outputs) if outputs is not None else out_names
        missing = [o for o in self.outputs if o not in out_names]
        if missing:
            raise InputError(f"EmberPredictor({self.path.name}): the engine has no output {missing[0]!r}; "
                             f"its outputs are {out_names}")
        self.output_columns = {o: (output_columns or {}).get(o, o) for o in self.outputs}
        self.keep_columns = keep_columns
        self.rows_per_run, self.fixed_rows = self._batch_limits()
        self._ctx = self.engine.create_context()

    def _column_of(self, input_name: str) -> str:
        for column, name in self.columns.items():
            if name == input_name:
                return column
        return input_name

    def _batch_limits(self) -> tuple[Optional[int], bool]:
        """The most rows one run takes (``None``: any) and whether the engine needs exactly that."""
        limit: Optional[int] = None
        fixed = False
        for spec in self.specs.values():
            if not spec.shape:
                raise InputError(f"EmberPredictor({self.path.name}): input {spec.name!r} is a scalar; a batch "
                                 f"predictor needs inputs whose dim 0 is the batch")
            dim = spec.shape[0]
            top = dim if isinstance(dim, int) else (spec.max[0] if spec.max else None)
            fixed = fixed or isinstance(dim, int)
            if top is not None:
                limit = top if limit is None else min(limit, top)
        return limit, fixed

    def close(self) -> None:
        """Releases the execution context."""
        self._ctx.close()

    # ---- batches ------------------------------------------------------------------------
    def __call__(self, batch: Batch) -> Batch:
        """One batch of rows in, the same rows with the outputs as columns out."""
        if isinstance(batch, Mapping):
            feeds = {name: self._array(col, batch.get(col)) for name, col in self.input_columns.items()}
            outputs = self.infer(feeds)
            kept = {c: batch[c] for c in self._kept(list(batch))}
            return {**kept, **{self.output_columns[o]: outputs[o] for o in self.outputs}}
        if hasattr(batch, "columns") and hasattr(batch, "assign"):  # pandas.DataFrame
            feeds = {name: self._array(col, batch[col] if col in batch.columns else None)
                     for name, col in self.input_columns.items()}
            outputs = self.infer(feeds)
            frame = batch[self._kept(list(batch.columns))].copy()
            for o in self.outputs:
                arr = outputs[o]
                frame[self.output_columns[o]] = list(arr) if arr.ndim > 1 else arr
            return frame
        raise InputError(f"EmberPredictor({self.path.name}) takes a dict of column arrays or a pandas "
                         f"DataFrame (map_batches' batch_format 'numpy' or 'pandas'), got {type(batch).__name__}")

    def _kept(self, names: list[str]) -> list[str]:
        outs = set(self.output_columns.values())
        if self.keep_columns is True:
            return [n for n in names if n not in outs]
        if self.keep_columns is False:
            return []
        wanted = list(self.keep_columns)
        missing = [c for c in wanted if c not in names]
        if missing:
            raise InputError(f"EmberPredictor({self.path.name}): keep_columns names {missing}, which the batch "
                             f"does not have; its columns are {names}")
        return wanted

    def _array(self, column: str, values: Any) -> np.ndarray:
        """A column as one array of the input's dtype (rows of a tensor column stacked)."""
        spec = self.specs[self.columns.get(column, column)]
        where = f"EmberPredictor({self.path.name}): column {column!r} (input {spec.name!r})"
        if values is None:
            raise InputError(f"{where} is missing from the batch; map the column that holds it with "
                             f"columns={{'<column>': {spec.name!r}}}")
        arr = np.asarray(values.to_numpy() if hasattr(values, "to_numpy") else values)
        if arr.dtype == object:
            shapes = {np.shape(v) for v in arr}
            if len(shapes) > 1:
                raise InputError(f"{where} holds rows of different shapes {sorted(shapes)[:4]} in one batch; pad "
                                 f"them to one shape before this step (the engine takes {spec.range_text()})")
            try:
                arr = np.stack([np.asarray(v) for v in arr]) if len(arr) else arr
            except (TypeError, ValueError) as exc:
                raise InputError(f"{where} does not hold numbers: {exc}") from None
        want = spec.dtype.to_numpy()
        if arr.dtype != want:
            if not np.can_cast(arr.dtype, want, casting="same_kind"):
                raise InputError(f"{where} is {arr.dtype} but the engine takes {want}; convert it first")
            if want.kind in "iu" and arr.size and arr.dtype.kind in "iu":
                info = np.iinfo(want)
                if arr.min() < info.min or arr.max() > info.max:
                    raise InputError(f"{where} holds values outside the range of {want}")
            arr = arr.astype(want)
        return np.ascontiguousarray(arr)

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Runs rows of any count: in slices of the most the engine takes per run, the last one
        padded (its first rows repeated) for an engine built for a fixed batch."""
        rows = {len(a) for a in feeds.values()}
        if len(rows) != 1:
            raise InputError(f"EmberPredictor({self.path.name}): the inputs have different row counts "
                             f"{ {k: len(v) for k, v in feeds.items()} }")
        total = rows.pop()
        if total == 0:
            return {o: np.zeros((0,), np.float32) for o in self.outputs}
        step = self.rows_per_run or total
        parts: dict[str, list[np.ndarray]] = {o: [] for o in self.outputs}
        for start in range(0, total, step):
            chunk = {k: v[start:start + step] for k, v in feeds.items()}
            n = len(next(iter(chunk.values())))
            if self.fixed_rows and n < step:
                chunk = {k: np.concatenate([v, np.repeat(v[-1:], step - n, axis=0)]) for k, v in chunk.items()}
            try:
                result = self._ctx.infer(chunk)
            except InputError as exc:
                raise InputError(f"EmberPredictor({self.path.name}): {exc}") from None
            for o in self.outputs:
                arr = np.asarray(result[o])
                if arr.ndim == 0 or arr.shape[0] != len(next(iter(chunk.values()))):
                    raise EmberError(f"EmberPredictor({self.path.name}): output {o!r} has shape {list(arr.shape)}, "
                                     f"whose dim 0 is not the batch; a batch predictor needs outputs per row")
                parts[o].append(arr[:n])
        return {o: np.concatenate(p) if len(p) > 1 else np.ascontiguousarray(p[0]) for o, p in parts.items()}
