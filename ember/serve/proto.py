"""Protobuf message classes of the gRPC protocol, built from ``protos/inference.proto`` at import.

Why not protoc-generated ``*_pb2.py``: generated modules pin the protobuf runtime they were made
with (protobuf 6 code refuses a protobuf 5 runtime and warns across minor versions), and the GPU
machines run other versions than this one. Why not tritonclient's modules: the server would then
depend on a client package. So this module reads the ``.proto`` (a small subset of proto3: nested
messages, enums, ``repeated``, ``map<,>``, ``oneof``, unary rpcs), builds a
``FileDescriptorProto``, and makes the classes in a private descriptor pool (a private pool also
keeps them apart from tritonclient's, which register the same ``inference.*`` names).

>>> from ember.serve.proto import messages
>>> messages()["ServerLiveResponse"](live=True).SerializeToString()
b'\\x08\\x01'
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

from google.protobuf import descriptor_pb2, descriptor_pool

from ember.errors import EmberError

if TYPE_CHECKING:
    from google.protobuf.message import Message

PROTO_FILE = Path(__file__).with_name("protos") / "inference.proto"

FDP = descriptor_pb2.FieldDescriptorProto
_SCALARS = {
    "double": FDP.TYPE_DOUBLE, "float": FDP.TYPE_FLOAT, "int64": FDP.TYPE_INT64,
    "uint64": FDP.TYPE_UINT64, "int32": FDP.TYPE_INT32, "uint32": FDP.TYPE_UINT32,
    "bool": FDP.TYPE_BOOL, "string": FDP.TYPE_STRING, "bytes": FDP.TYPE_BYTES,
}
_TOKEN = re.compile(r'\s+|//[^\n]*|"[^"]*"|[A-Za-z_][\w.]*|-?\d+|[{}()<>=;,]')


class ProtoSyntaxError(EmberError):
    """The bundled .proto file uses syntax the small parser does not know."""


@dataclass
class _Field:
    name: str
    number: int
    type: str
    repeated: bool = False
    oneof: Optional[str] = None
    map_types: Optional[tuple[str, str]] = None


@dataclass
class _Message:
    name: str
    fields: list[_Field] = field(default_factory=list)
    messages: list[_Message] = field(default_factory=list)
    enums: list[tuple[str, list[tuple[str, int]]]] = field(default_factory=list)
    oneofs: list[str] = field(default_factory=list)


class _Parser:
    """Recursive descent over the tokens of one .proto file."""

    def __init__(self, text: str, source: str) -> None:
        self.tokens = [t for t in _TOKEN.findall(text) if t.strip() and not t.startswith("//")]
        if "".join(self.tokens) != re.sub(r"\s+|//[^\n]*", "", text):
            raise ProtoSyntaxError(f"{source}: characters the proto parser does not know")
        self.pos = 0
        self.source = source
        self.package = ""
        self.messages: list[_Message] = []
        self.enums: list[tuple[str, list[tuple[str, int]]]] = []
        self.services: list[tuple[str, list[tuple[str, str, str]]]] = []

    def peek(self) -> str:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else ""

    def take(self, expected: Optional[str] = None) -> str:
        tok = self.peek()
        if not tok or (expected is not None and tok != expected):
            raise ProtoSyntaxError(f"{self.source}: expected {expected or 'a token'!r} at token "
                                   f"{self.pos} but found {tok!r}")
        self.pos += 1
        return tok

    def parse(self) -> _Parser:
        while self.peek():
            kw = self.take()
            if kw == "syntax":
                self.take("=")
                if self.take() != '"proto3"':
                    raise ProtoSyntaxError(f"{self.source}: only proto3 is supported")
                self.take(";")
            elif kw == "package":
                self.package = self.take()
                self.take(";")
            elif kw == "message":
                self.messages.append(self.message())
            elif kw == "enum":
                self.enums.append(self.enum())
            elif kw == "service":
                self.services.append(self.service())
            else:
                raise ProtoSyntaxError(f"{self.source}: unexpected {kw!r} at top level")
        return self

    def message(self) -> _Message:
        msg = _Message(self.take())
        self.take("{")
        while self.peek() != "}":
            tok = self.peek()
            if tok == "message":
                self.take()
                msg.messages.append(self.message())
            elif tok == "enum":
                self.take()
                msg.enums.append(self.enum())
            elif tok == "oneof":
                self.take()
                name = self.take()
                msg.oneofs.append(name)
                self.take("{")
                while self.peek() != "}":
                    msg.fields.append(self.field(oneof=name))
                self.take("}")
            else:
                msg.fields.append(self.field())
        self.take("}")
        return msg

    def field(self, oneof: Optional[str] = None) -> _Field:
        repeated = self.peek() == "repeated"
        if repeated:
            self.take()
        map_types = None
        if self.peek() == "map":
            self.take()
            self.take("<")
            key = self.take()
            self.take(",")
            value = self.take()
            self.take(">")
            map_types, typ = (key, value), ""
        else:
            typ = self.take()
        name = self.take()
        self.take("=")
        number = int(self.take())
        self.take(";")
        return _Field(name, number, typ, repeated or map_types is not None, oneof, map_types)

    def enum(self) -> tuple[str, list[tuple[str, int]]]:
        name = self.take()
        self.take("{")
        values = []
        while self.peek() != "}":
            value = self.take()
            self.take("=")
            values.append((value, int(self.take())))
            self.take(";")
        self.take("}")
        return name, values

    def service(self) -> tuple[str, list[tuple[str, str, str]]]:
        name = self.take()
        self.take("{")
        rpcs = []
        while self.peek() != "}":
            self.take("rpc")
            method = self.take()
            self.take("(")
            req = self.take()
            self.take(")")
            self.take("returns")
            self.take("(")
            resp = self.take()
            self.take(")")
            self.take("{")
            self.take("}")
            rpcs.append((method, req, resp))
        self.take("}")
        return name, rpcs


def _camel(name: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in name.split("_"))


class _Builder:
    """Turns the parse tree into a ``FileDescriptorProto`` with fully qualified type names."""

    def __init__(self, parsed: _Parser, filename: str) -> None:
        self.parsed = parsed
        self.filename = filename
        self.kinds: dict[str, str] = {}     # full name ("inference.X.Y") -> "message" | "enum"
        pkg = parsed.package
        for name, _ in parsed.enums:
            self.kinds[f"{pkg}.{name}"] = "enum"
        for m in parsed.messages:
            self._index(m, pkg)

    def _index(self, msg: _Message, scope: str) -> None:
        full = f"{scope}.{msg.name}"
        self.kinds[full] = "message"
        for name, _ in msg.enums:
            self.kinds[f"{full}.{name}"] = "enum"
        for m in msg.messages:
            self._index(m, full)

    def resolve(self, name: str, scope: str) -> tuple[str, str]:
        """Protobuf's scoping: the innermost enclosing scope that defines ``name`` wins."""
        parts = scope.split(".")
        while parts:
            full = ".".join(parts + [name])
            if full in self.kinds:
                return full, self.kinds[full]
            parts.pop()
        if name in self.kinds:
            return name, self.kinds[name]
        raise ProtoSyntaxError(f"{self.filename}: unknown type {name!r} used in {scope}")

    def build(self) -> descriptor_pb2.FileDescriptorProto:
        fd = descriptor_pb2.FileDescriptorProto(name=self.filename, package=self.parsed.package,
                                                syntax="proto3")
        for name, values in self.parsed.enums:
            self._enum(fd.enum_type.add(), name, values)
        for m in self.parsed.messages:
            self._message(fd.message_type.add(), m, self.parsed.package)
        for name, rpcs in self.parsed.services:
            svc = fd.service.add(name=name)
            for method, req, resp in rpcs:
                svc.method.add(name=method, input_type="." + self.resolve(req, self.parsed.package)[0],
                               output_type="." + self.resolve(resp, self.parsed.package)[0])
        return fd

    @staticmethod
    def _enum(proto, name: str, values: list[tuple[str, int]]) -> None:
        proto.name = name
        for value, number in values:
            proto.value.add(name=value, number=number)

    def _message(self, proto, msg: _Message, scope: str) -> None:
        proto.name = msg.name
        full = f"{scope}.{msg.name}"
        for name, values in msg.enums:
            self._enum(proto.enum_type.add(), name, values)
        for m in msg.messages:
            self._message(proto.nested_type.add(), m, full)
        for name in msg.oneofs:
            proto.oneof_decl.add(name=name)
        for f in msg.fields:
            fp = proto.field.add(name=f.name, number=f.number, json_name=_json_name(f.name),
                                 label=FDP.LABEL_REPEATED if f.repeated else FDP.LABEL_OPTIONAL)
            if f.oneof is not None:
                fp.oneof_index = msg.oneofs.index(f.oneof)
            if f.map_types is not None:
                entry = proto.nested_type.add(name=_camel(f.name) + "Entry")
                entry.options.map_entry = True
                self._set_type(entry.field.add(name="key", number=1, json_name="key",
                                               label=FDP.LABEL_OPTIONAL), f.map_types[0], full)
                self._set_type(entry.field.add(name="value", number=2, json_name="value",
                                               label=FDP.LABEL_OPTIONAL), f.map_types[1], full)
                fp.type = FDP.TYPE_MESSAGE
                fp.type_name = f".{full}.{entry.name}"
            else:
                self._set_type(fp, f.type, full)

    def _set_type(self, fp, typ: str, scope: str) -> None:
        if typ in _SCALARS:
            fp.type = _SCALARS[typ]
            return
        full, kind = self.resolve(typ, scope)
        fp.type = FDP.TYPE_MESSAGE if kind == "message" else FDP.TYPE_ENUM
        fp.type_name = "." + full


def _json_name(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p[:1].upper() + p[1:] for p in rest)


def _message_class(descriptor):
    try:
        from google.protobuf.message_factory import GetMessageClass
    except ImportError:  # protobuf < 4.21
        from google.protobuf.message_factory import MessageFactory

        return MessageFactory(descriptor.file.pool).GetPrototype(descriptor)
    return GetMessageClass(descriptor)


@functools.cache
def file_descriptor(path: str = str(PROTO_FILE)):
    """The ``FileDescriptor`` of the bundled .proto, in a pool of its own."""
    parsed = _Parser(Path(path).read_text(), path).parse()
    proto = _Builder(parsed, "ember/inference.proto").build()
    pool = descriptor_pool.DescriptorPool()
    pool.AddSerializedFile(proto.SerializeToString())
    return pool.FindFileByName(proto.name)


@functools.cache
def messages() -> dict[str, type[Message]]:
    """Message classes by name: top-level (``"ModelInferRequest"``) and nested
    (``"ModelInferRequest.InferInputTensor"``)."""
    fd = file_descriptor()
    out: dict[str, type[Message]] = {}

    def visit(desc, prefix: str) -> None:
        if desc.GetOptions().map_entry:
            return
        out[prefix + desc.name] = _message_class(desc)
        for nested in desc.nested_types:
            visit(nested, prefix + desc.name + ".")

    for desc in fd.message_types_by_name.values():
        visit(desc, "")
    return out


def service_methods() -> dict[str, tuple[type[Message], type[Message]]]:
    """``{rpc name: (request class, response class)}`` of ``inference.GRPCInferenceService``."""
    fd = file_descriptor()
    svc = fd.services_by_name["GRPCInferenceService"]
    cls = messages()
    return {m.name: (cls[m.input_type.name], cls[m.output_type.name]) for m in svc.methods}


SERVICE_NAME = "inference.GRPCInferenceService"
