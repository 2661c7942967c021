"""Choice-valued attrs are enums: ``StrEnum``s that still compare equal to their strings, and
attrs built from strings (older engine files, passes, tests) are coerced on construction."""
from __future__ import annotations

import pytest

from ember.ir import DType, Node, OpType, TensorType
from ember.ir.printer import format_node
from ember.ops.attrs import (
    AttrEnum,
    CastAttrs,
    ConstantOfShapeAttrs,
    DepthSpaceAttrs,
    EyeLikeAttrs,
    GeluAttrs,
    GridSampleAttrs,
    GridSampleMode,
    PadAttrs,
    PadMode,
    ResizeAttrs,
    ResizeMode,
    RNNActivation,
    RNNAttrs,
    RNNDirection,
    ScatterAttrs,
    ScatterReduction,
)
from ember.ops.registry import infer_node


def test_strings_are_coerced_to_enums():
    a = ResizeAttrs("linear", "asymmetric", "floor")
    assert a.mode is ResizeMode.LINEAR and a == ResizeAttrs(ResizeMode.LINEAR, "asymmetric", "floor")
    assert PadAttrs("reflect").mode is PadMode.REFLECT
    assert CastAttrs("float16").to is DType.FLOAT16 and CastAttrs(DType.INT64).to is DType.INT64
    assert ConstantOfShapeAttrs(1, "int64").dtype is DType.INT64
    assert ConstantOfShapeAttrs().dtype is DType.FLOAT32
    assert EyeLikeAttrs("bool").dtype is DType.BOOL and EyeLikeAttrs().dtype is None
    assert DepthSpaceAttrs(2, "CRD").mode == "CRD" and ScatterAttrs("add").reduction is ScatterReduction.ADD
    assert GridSampleAttrs("nearest").mode is GridSampleMode.NEAREST
    assert GeluAttrs("tanh").approximate == "tanh"
    rnn = RNNAttrs(4, "reverse", ("Sigmoid", "Tanh", "Tanh"))
    assert rnn.direction is RNNDirection.REVERSE and rnn.activations[0] is RNNActivation.SIGMOID


def test_enums_still_read_as_their_strings():
    mode = ResizeMode.LINEAR
    assert mode == "linear" and mode in ("nearest", "linear") and {"linear": 1}[mode] == 1
    assert f"{mode}" == "linear" and repr(mode) == "'linear'" and str(mode) == "linear"
    assert ResizeMode.values() == ("nearest", "linear", "cubic") and issubclass(ResizeMode, AttrEnum)


@pytest.mark.parametrize("make,field", [
    (lambda: ResizeAttrs(mode="bicubic"),
     "ResizeAttrs.mode='bicubic' is not one of 'nearest', 'linear', 'cubic'"),
    (lambda: PadAttrs("mirror"), "PadAttrs.mode='mirror'"),
    (lambda: CastAttrs("fp16"), "CastAttrs.to='fp16'"),
    (lambda: RNNAttrs(2, activations=("Swish",)), "RNNAttrs.activations"),
])
def test_bad_strings_raise_naming_class_field_and_values(make, field):
    with pytest.raises(ValueError, match=field.replace("(", r"\(").replace(".", r"\.")):
        make()


def test_attrs_with_enums_hash_and_print_as_before():
    assert hash(PadAttrs("edge")) == hash(PadAttrs(PadMode.EDGE))
    node = Node("r", OpType.RESIZE, ("x",), ("y",), ResizeAttrs("linear", scales=(1.0, 1.0, 2.0, 2.0)))
    assert "mode=linear" in format_node(node)
    x = TensorType(DType.FLOAT32, (1, 2, 3, 3))
    assert infer_node(node, [x], [None]) == [x.with_shape((1, 2, 6, 6))]


def test_cast_and_constant_of_shape_infer_from_dtype_enums():
    cast = Node("c", OpType.CAST, ("x",), ("y",), CastAttrs(DType.INT32))
    assert infer_node(cast, [TensorType(DType.FLOAT32, (2,))], [None])[0].dtype is DType.INT32
