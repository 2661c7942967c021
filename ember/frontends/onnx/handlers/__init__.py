"""ONNX op handlers, one module per op family; imported from this explicit list (never by
scanning), so adding a family is adding a name here."""
from ember.frontends.onnx.handlers import (  # noqa: F401
    activation,
    composite,
    constant,
    control,
    conv,
    elementwise,
    glu,
    index,
    linalg,
    movement,
    norm,
    pool,
    quantize,
    recurrent,
    reduce,
    resize,
    roi,
    shape,
    signal,
)
