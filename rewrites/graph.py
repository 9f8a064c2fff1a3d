"""A small mutable view over a GraphDef, and `validate`.

`Graph` copies the GraphDef it is given (passes are pure), indexes nodes by name,
keeps a consumers map, parses inputs (`node`, `node:1`, `^ctrl`), reads and
writes Const values, adds and removes nodes, rewires uses of a tensor, and knows
static shapes: from a node's `_output_shapes`, a Const's value, a Placeholder's
`shape`, or else TensorFlow's own shape functions run on a weight-free copy of
the graph (large constants become Placeholders of the same shape and dtype, so
Reshape targets and reduction axes still fold).

Large constants may be *detached* (see rewrites.constants): the GraphDef's Const
keeps its dtype and shape, its value lives in a `{node name: ndarray}` map beside
it.  Passes read and write values through `Graph` and never see the difference.

Tensors are named as in GraphDef inputs: `name` for port 0, `name:port` else;
every method taking a tensor reads 'a' and 'a:0' alike.
"""

import collections
import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf
from tensorflow.python.framework import op_def_registry

from rewrites import constants as constants_lib

logger = logging.getLogger(__name__)

GraphDef = tf.compat.v1.GraphDef
NodeDef = tf.compat.v1.NodeDef

#: Constants at most this many elements stay in the copy used for shape inference.
_SHAPE_INFERENCE_CONST_LIMIT = 4096


class GraphValidationError(ValueError):
    """A GraphDef is malformed: duplicate names, dangling inputs or a cycle."""


def parse_input(text: str) -> Tuple[str, int, bool]:
    """'^a' -> ('a', -1, True); 'a:2' -> ('a', 2, False); 'a' -> ('a', 0, False)."""
    if text.startswith("^"):
        return text[1:], -1, True
    name, sep, port = text.rpartition(":")
    if sep and port.isdigit():
        return name, int(port), False
    return text, 0, False


def tensor_name(node: str, port: int = 0) -> str:
    """The canonical input string of output `port` of `node`."""
    return node if port == 0 else f"{node}:{port}"


def canonical(tensor: str) -> str:
    """'a:0' -> 'a'; other names unchanged."""
    node, port, control = parse_input(tensor)
    return f"^{node}" if control else tensor_name(node, port)


def validate(graph_def: GraphDef) -> None:
    """Raises GraphValidationError unless names are unique, every input names an
    existing node, and the graph (data and control edges) is acyclic."""
    names = collections.Counter(n.name for n in graph_def.node)
    duplicates = sorted(n for n, c in names.items() if c > 1)
    if duplicates:
        raise GraphValidationError(f"duplicate node names: {', '.join(duplicates[:5])}")
    for node in graph_def.node:
        for text in node.input:
            source, _, _ = parse_input(text)
            if source not in names:
                raise GraphValidationError(
                    f"node {node.name!r} ({node.op}) reads {text!r}, which does not exist")
    order = topological_order(graph_def.node)
    if len(order) != len(graph_def.node):
        stuck = sorted(set(names) - {n.name for n in order})
        raise GraphValidationError(f"graph has a cycle through {', '.join(stuck[:5])}")


def topological_order(nodes: Iterable[NodeDef]) -> List[NodeDef]:
    """Nodes with producers first, stable in the given order (Kahn's algorithm).
    Nodes on a cycle are left out."""
    nodes = list(nodes)
    by_name = {n.name: n for n in nodes}
    pending = {}
    users = collections.defaultdict(list)
    for node in nodes:
        sources = {parse_input(t)[0] for t in node.input} & by_name.keys()
        pending[node.name] = len(sources)
        for source in sources:
            users[source].append(node.name)
    position = {n.name: i for i, n in enumerate(nodes)}
    ready = [n.name for n in nodes if pending[n.name] == 0]
    ready.reverse()
    order = []
    while ready:
        name = ready.pop()
        order.append(by_name[name])
        released = []
        for user in users[name]:
            pending[user] -= 1
            if pending[user] == 0:
                released.append(user)
        ready.extend(sorted(released, key=position.get, reverse=True))
    return order


def is_stateful(op: str) -> bool:
    """True for ops TensorFlow marks stateful, and for ops it does not know."""
    op_def = op_def_registry.get(op)
    return op_def is None or op_def.is_stateful


class Graph:
    """A mutable copy of a GraphDef.

    Args:
      graph_def: the graph; it is copied, never modified, unless `copy` is False.
      protected: node names that passes must neither remove nor replace.
      copy: False hands the GraphDef over (the pipeline does so for its own
        intermediate graphs, saving one weight-sized copy per pass); its nodes are
        then edited in place.
      constants: the values of the graph's detached Consts (rewrites.constants);
        given, the graph works detached: new constants of DETACH_MIN_BYTES or
        more are detached too, and `constants` holds the values of the result.
        The map is copied unless `copy` is False (the arrays never are: passes
        replace values, they do not write into them).
    """

    def __init__(self, graph_def: GraphDef, protected: Iterable[str] = (), copy: bool = True,
                 constants: Optional[Dict[str, np.ndarray]] = None):
        if copy:
            self._graph_def = GraphDef()
            self._graph_def.CopyFrom(graph_def)
        else:
            self._graph_def = graph_def
        self.detached = constants is not None
        self._detached: Dict[str, np.ndarray] = (
            {} if constants is None else dict(constants) if copy else constants)
        self._nodes: Dict[str, NodeDef] = collections.OrderedDict(
            (n.name, n) for n in self._graph_def.node)
        self.protected = frozenset(protected)
        missing = sorted(self.protected - self._nodes.keys())
        if missing:
            logger.debug("protected nodes not in the graph: %s", ", ".join(missing))
        self._consumers = None
        self._shapes = None
        self._const_cache: Dict[str, np.ndarray] = {}

    # ----------------------------------------------------------------- reading
    def __contains__(self, name: str) -> bool:
        return name in self._nodes

    def __len__(self) -> int:
        return len(self._nodes)

    def names(self) -> List[str]:
        return list(self._nodes)

    def nodes(self) -> List[NodeDef]:
        return list(self._nodes.values())

    def node(self, name_or_tensor: str) -> NodeDef:
        """The node of a name or tensor name ('a', 'a:1', '^a')."""
        return self._nodes[parse_input(name_or_tensor)[0]]

    def get(self, name_or_tensor: str) -> Optional[NodeDef]:
        return self._nodes.get(parse_input(name_or_tensor)[0])

    @property
    def library(self):
        """The graph's FunctionDefLibrary (functions its nodes may call)."""
        return self._graph_def.library

    def topological(self) -> List[NodeDef]:
        return topological_order(self._nodes.values())

    @staticmethod
    def data_inputs(node: NodeDef) -> List[str]:
        return [t for t in node.input if not t.startswith("^")]

    @staticmethod
    def control_inputs(node: NodeDef) -> List[str]:
        return [t[1:] for t in node.input if t.startswith("^")]

    def consumers(self, tensor: str) -> List[Tuple[str, int]]:
        """(consumer name, input index) of every data use of one tensor; 'a' is
        'a:0' (the uses of every output of a node: `consumer_names`)."""
        node, port, _ = parse_input(tensor)
        return [(c, i) for c, i, p in self._consumer_map()[node]["data"] if p == port]

    def control_consumers(self, name: str) -> List[str]:
        return list(self._consumer_map()[parse_input(name)[0]]["control"])

    def consumer_names(self, name: str) -> set:
        """Names of every node that reads node `name`: any of its outputs, or
        its control output."""
        uses = self._consumer_map()[parse_input(name)[0]]
        return {c for c, _, _ in uses["data"]} | set(uses["control"])

    def num_outputs(self, node_or_name) -> int:
        """How many outputs a node has, by its op's definition (a list argument
        counts its length: Split's num_split, IdentityN's T); for an op this
        TensorFlow does not know, one more than the highest port read."""
        node = self.node(node_or_name) if isinstance(node_or_name, str) else node_or_name
        op_def = op_def_registry.get(node.op)
        if op_def is None:
            ports = [p for _, _, p in self._consumer_map()[node.name]["data"]]
            return max(ports, default=0) + 1
        total = 0
        for arg in op_def.output_arg:
            if arg.number_attr:
                total += node.attr[arg.number_attr].i
            elif arg.type_list_attr:
                total += len(node.attr[arg.type_list_attr].list.type)
            else:
                total += 1
        return total

    def output_tensors(self, node_or_name) -> List[str]:
        """The node's output tensors: 'a', 'a:1', ... (see num_outputs)."""
        node = self.node(node_or_name) if isinstance(node_or_name, str) else node_or_name
        return [tensor_name(node.name, p) for p in range(self.num_outputs(node))]

    def _consumer_map(self):
        if self._consumers is None:
            table = collections.defaultdict(lambda: {"data": [], "control": []})
            for node in self._nodes.values():
                for index, text in enumerate(node.input):
                    source, port, control = parse_input(text)
                    if control:
                        table[source]["control"].append(node.name)
                    else:
                        table[source]["data"].append((node.name, index, port))
            self._consumers = table
        return self._consumers

    def resolve_identity(self, tensor: str, ops: Sequence[str] = ("Identity",)) -> str:
        """Follows Identity nodes (data input only, no control inputs) back to
        the tensor they forward."""
        seen = set()
        while True:
            node = self.get(tensor)
            if (node is None or node.op not in ops or node.name in seen
                    or self.control_inputs(node) or len(self.data_inputs(node)) != 1):
                return canonical(tensor)
            seen.add(node.name)
            tensor = self.data_inputs(node)[0]

    def is_const(self, tensor: str) -> bool:
        """True if `tensor` is a Const, possibly behind Identity nodes."""
        node = self.get(self.resolve_identity(tensor))
        return node is not None and node.op == "Const"

    def const_value(self, tensor: str) -> Optional[np.ndarray]:
        """The value of a Const tensor (seen through Identity nodes), or None."""
        source = self.resolve_identity(tensor)
        node = self.get(source)
        if node is None or node.op != "Const":
            return None
        if node.name in self._detached:
            return self._detached[node.name]
        if node.name not in self._const_cache:
            self._const_cache[node.name] = tf.make_ndarray(node.attr["value"].tensor)
        return self._const_cache[node.name]

    @property
    def constants(self) -> Dict[str, np.ndarray]:
        """The values of the detached Consts still in the graph."""
        for name in [n for n in self._detached if n not in self._nodes]:
            del self._detached[name]
        return self._detached

    def dtype(self, tensor: str) -> Optional[tf.DType]:
        """The dtype of a tensor, from its op's definition and the node's
        attributes (for ops with one output argument), else shape inference."""
        node, port, _ = parse_input(tensor)
        nd = self._nodes[node]
        op_def = op_def_registry.get(nd.op)
        if op_def is not None and len(op_def.output_arg) == 1:
            arg = op_def.output_arg[0]
            if arg.type:
                return tf.as_dtype(arg.type)
            if arg.type_attr and arg.type_attr in nd.attr:
                return tf.as_dtype(nd.attr[arg.type_attr].type)
        inferred = self._inferred().get(tensor_name(node, port))
        return inferred[1] if inferred else None

    def shape(self, tensor: str) -> Optional[Tuple[Optional[int], ...]]:
        """Static shape of a tensor (None entries for unknown dims), or None if
        the rank is unknown."""
        node_name, port, _ = parse_input(tensor)
        node = self._nodes[node_name]
        if "_output_shapes" in node.attr and len(node.attr["_output_shapes"].list.shape) > port:
            proto = node.attr["_output_shapes"].list.shape[port]
            if not proto.unknown_rank:
                return tuple(d.size if d.size >= 0 else None for d in proto.dim)
        if node.op == "Const":
            return tuple(d.size for d in node.attr["value"].tensor.tensor_shape.dim)
        if node.op == "Placeholder" and "shape" in node.attr:
            proto = node.attr["shape"].shape
            if not proto.unknown_rank:
                return tuple(d.size if d.size >= 0 else None for d in proto.dim)
        inferred = self._inferred().get(tensor_name(node_name, port))
        return inferred[0] if inferred else None

    def _inferred(self):
        if self._shapes is None:
            self._shapes = _infer_shapes(self._nodes.values(), self._graph_def)
        return self._shapes

    # ----------------------------------------------------------------- editing
    def _changed(self, shapes: bool = True):
        self._consumers = None
        if shapes:  # adding a node changes no existing tensor's shape
            self._shapes = None

    def unique_name(self, base: str, taken: Callable[[str], bool] = lambda name: False) -> str:
        """`base`, or `base_1`, `base_2`, ... whichever is free: not a node of the
        graph, nor `taken` (names an edit has reserved)."""
        base = base.lstrip("_") or "node"

        def free(name):
            return name not in self._nodes and not taken(name)
        if free(base):
            return base
        index = 1
        while not free(f"{base}_{index}"):
            index += 1
        return f"{base}_{index}"

    def add_node(self, op: str, name: str, inputs: Sequence[str] = (),
                 attrs: Optional[dict] = None) -> NodeDef:
        """Adds a node under a free variant of `name`; attrs values may be
        AttrValue protos, tf.DType, bool, int, float, str or lists of ints."""
        node = NodeDef(op=op, name=self.unique_name(name))
        node.input.extend(inputs)
        for key, value in (attrs or {}).items():
            node.attr[key].CopyFrom(make_attr(value))
        self._nodes[node.name] = node
        self._changed(shapes=False)
        return node

    def add_const(self, name: str, value, dtype=None) -> str:
        """Adds a Const node holding `value`; returns its name."""
        node = self.add_node("Const", name)
        self._store_const(node, value, dtype)
        return node.name

    def set_const(self, name: str, value, dtype=None) -> None:
        """Replaces the value of Const `name` (its dtype follows the value)."""
        node = self._nodes[name]
        if node.op != "Const":
            raise ValueError(f"set_const: node {name!r} is a {node.op}, expected a Const")
        self._store_const(node, value, dtype)
        self._changed()

    def replace_with_const(self, name: str, value, dtype=None) -> None:
        """Puts a Const holding `value` in place of node `name` (same name, so its
        readers do not change; its `_output_shapes` kept)."""
        new = NodeDef(op="Const", name=name)
        old = self._nodes[name]
        if "_output_shapes" in old.attr:
            new.attr["_output_shapes"].CopyFrom(old.attr["_output_shapes"])
        self.replace_node(name, new)
        self._store_const(new, value, dtype)

    def _store_const(self, node: NodeDef, value, dtype=None) -> None:
        self._const_cache.pop(node.name, None)
        self._detached.pop(node.name, None)
        if self.detached:
            array = np.asarray(value, dtype=None if dtype is None
                               else tf.as_dtype(dtype).as_numpy_dtype)
            if array.nbytes >= constants_lib.DETACH_MIN_BYTES:
                node.attr["dtype"].type = tf.as_dtype(array.dtype).as_datatype_enum
                node.attr["value"].tensor.CopyFrom(constants_lib.shape_only_proto(array))
                self._detached[node.name] = array
                return
        proto = tf.make_tensor_proto(value, dtype=dtype)
        node.attr["dtype"].type = proto.dtype
        node.attr["value"].tensor.CopyFrom(proto)

    def replace_node(self, name: str, new: NodeDef) -> None:
        """Puts `new` in place of node `name`, keeping the name and position."""
        new.name = name
        self._nodes[name] = new
        self._const_cache.pop(name, None)
        self._detached.pop(name, None)
        self._changed()

    def set_inputs(self, name: str, inputs: Sequence[str]) -> None:
        """Replaces the input list of node `name`."""
        node = self._nodes[name]
        del node.input[:]
        node.input.extend(inputs)
        self._changed()

    def remove(self, names: Iterable[str]) -> None:
        """Removes nodes; the caller makes sure nothing still reads them."""
        for name in names:
            self._nodes.pop(name, None)
            self._const_cache.pop(name, None)
            self._detached.pop(name, None)
        self._changed()

    def replace_uses(self, mapping: Dict[str, str], skip: Iterable[str] = ()) -> int:
        """Rewires every data input reading a key of `mapping` (tensor names) to
        read its value instead; returns the number of inputs changed."""
        mapping = {canonical(k): v for k, v in mapping.items()}
        skip = set(skip)
        changed = 0
        for node in self._nodes.values():
            if node.name in skip:
                continue
            for index, text in enumerate(node.input):
                if text.startswith("^"):
                    continue
                new = mapping.get(canonical(text))
                if new is not None:
                    node.input[index] = new
                    changed += 1
        if changed:
            self._changed()
        return changed

    def remove_unused(self, candidates: Iterable[str]) -> List[str]:
        """Removes candidates nobody reads (data or control), repeatedly, so a
        chain of otherwise unused candidates goes at once.  Protected nodes and
        Placeholders stay.  Returns the removed names."""
        candidates = {c for c in candidates if c in self._nodes}
        removed = []
        progress = True
        while progress:
            progress = False
            for name in sorted(candidates):
                node = self._nodes.get(name)
                if (node is None or name in self.protected or node.op == "Placeholder"
                        or self.consumer_names(name)):
                    continue
                self.remove([name])
                candidates.discard(name)
                removed.append(name)
                progress = True
        return removed

    def to_graph_def(self) -> GraphDef:
        """A new GraphDef: the nodes in topological order, versions and library kept.
        A detached graph's GraphDef is detached too (values in `constants`)."""
        out = constants_lib.without_nodes(self._graph_def)
        order = self.topological()
        if len(order) != len(self._nodes):  # a cycle: keep every node, validate() will say
            order = list(self._nodes.values())
        out.node.extend(order)
        return out


def make_attr(value) -> tf.compat.v1.AttrValue:
    """An AttrValue from a Python value (AttrValue passes through)."""
    attr = tf.compat.v1.AttrValue
    if isinstance(value, attr):
        return value
    if isinstance(value, tf.DType):
        return attr(type=value.as_datatype_enum)
    if isinstance(value, bool):
        return attr(b=value)
    if isinstance(value, int):
        return attr(i=value)
    if isinstance(value, float):
        return attr(f=value)
    if isinstance(value, (str, bytes)):
        return attr(s=value.encode() if isinstance(value, str) else value)
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return attr(list=attr.ListValue(i=list(value)))
    raise TypeError(f"make_attr: cannot turn {type(value).__name__} {value!r} into an AttrValue")


def _infer_shapes(nodes, graph_def: GraphDef) -> Dict[str, tuple]:
    """tensor name -> (shape tuple or None, dtype) by TensorFlow's shape functions,
    on a copy whose large constants are Placeholders (cheap to import)."""
    nodes = list(nodes)
    large = [n.name for n in nodes if n.op == "Const" and int(np.prod(
        [d.size for d in n.attr["value"].tensor.tensor_shape.dim], dtype=np.int64))
        > _SHAPE_INFERENCE_CONST_LIMIT]
    light = constants_lib.consts_as_placeholders(graph_def, large, nodes)
    result = {}
    graph = tf.Graph()
    try:
        with graph.as_default():
            tf.compat.v1.import_graph_def(light, name="")
    except (ValueError, TypeError, tf.errors.OpError) as e:
        logger.warning("shape inference could not import the graph: %s", str(e).splitlines()[0])
        return result
    for op in graph.get_operations():
        for port, out in enumerate(op.outputs):
            shape = None
            if out.shape.rank is not None:
                shape = tuple(out.shape.as_list())
            result[tensor_name(op.name, port)] = (shape, out.dtype)
    return result
