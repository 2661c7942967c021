"""TensorFlow ops tf2onnx (1.17) does not convert but common models hold, handed to it through
its custom-op handlers (``custom_op_handlers={tf_op: (handler, [])}``): each rewrites the
TensorFlow node in place into standard ONNX ops.

- ``Erfc``: Keras 3's exact GELU (``keras.activations.gelu``, ``approximate=False``) is
  ``0.5 * x * erfc(-x / sqrt(2))``; written ``1 - Erf(x)``, whose absolute error is float32's
  (the relative error of erfc's tiny values in its far tail is lost, which GELU multiplies by a
  bounded x and does not see).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

from ember.frontends.tensorflow.libs import require


def _erfc(ctx: Any, node: Any, name: str, args: Any) -> None:
    import onnx

    utils = require("tf2onnx.utils", "a TensorFlow model")
    x = node.input[0]
    dtype = onnx.helper.tensor_dtype_to_np_dtype(ctx.get_dtype(x))
    erf = ctx.make_node("Erf", [x], op_name_scope=node.name).output[0]
    one = ctx.make_const(utils.make_name(f"{node.name}_one"), np.array(1, dtype=dtype)).output[0]
    node.type = "Sub"
    node.domain = ""
    ctx.replace_inputs(node, [one, erf])


#: TensorFlow op -> handler, in tf2onnx's custom-op form.
HANDLERS: dict[str, tuple[Callable[..., None], list[Any]]] = {"Erfc": (_erfc, [])}
