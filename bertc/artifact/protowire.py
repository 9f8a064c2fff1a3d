"""The protobuf wire format, for writing and reading SavedModels piece by piece.

A message is a sequence of fields, each a varint key `(number << 3) | wire type`
and a payload; a length-delimited payload (wire type 2: strings, bytes, nested
messages, map entries) is a varint length and that many bytes.  Fields may come
in any order and a repeated field's entries need not be adjacent, so a message
can be written as the concatenation of its parts.
"""

from typing import BinaryIO, Iterator, Tuple

VARINT, FIXED64, LENGTH_DELIMITED, FIXED32 = 0, 1, 2, 5

# The field numbers on the path from a SavedModel to a weight's bytes (the writer
# in bertc/artifact/saved_model_writer.py and the reader in bertc/artifact/saved_model_reader.py walk it).
SAVED_MODEL_META_GRAPHS = 2   # SavedModel.meta_graphs
META_GRAPH_GRAPH_DEF = 2      # MetaGraphDef.graph_def
GRAPH_DEF_NODE = 1            # GraphDef.node
NODE_ATTR = 5                 # NodeDef.attr (map<string, AttrValue>)
MAP_KEY, MAP_VALUE = 1, 2     # a map entry's key and value
ATTR_VALUE_TENSOR = 8         # AttrValue.tensor
TENSOR_CONTENT = 4            # TensorProto.tensor_content


def encode_varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def read_varint(f: BinaryIO) -> int:
    value, shift = 0, 0
    while True:
        byte = f.read(1)
        if not byte:
            raise EOFError("truncated protobuf varint")
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7


def field_header(number: int, payload_length: int) -> bytes:
    """Key and length of a length-delimited field."""
    return encode_varint((number << 3) | LENGTH_DELIMITED) + encode_varint(payload_length)


def fields(f: BinaryIO, end: int) -> Iterator[Tuple[int, int, int, bytes]]:
    """(number, wire type, payload length, header bytes) of each field from the
    file position up to offset `end`.  Scalar payloads are consumed and included
    in the header bytes (length 0); a length-delimited payload is next in `f`
    and the caller reads or skips it before asking for the next field."""
    while f.tell() < end:
        key = read_varint(f)
        number, wire = key >> 3, key & 7
        header = encode_varint(key)
        if wire == LENGTH_DELIMITED:
            length = read_varint(f)
            yield number, wire, length, header + encode_varint(length)
        elif wire == VARINT:
            yield number, wire, 0, header + encode_varint(read_varint(f))
        elif wire in (FIXED64, FIXED32):
            yield number, wire, 0, header + f.read(8 if wire == FIXED64 else 4)
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
