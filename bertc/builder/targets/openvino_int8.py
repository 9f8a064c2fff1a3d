"""`--target openvino --dtype int8`: NNCF post-training quantization, bounded.

Per bucket, the fp32 IR that bertc/builder/targets/openvino.py wrote is quantized
by `nncf.quantize(model, calibration, model_type=nncf.ModelType.TRANSFORMER)`
(dense layers and attention matmuls; SmoothQuant and bias correction), calibrated
on real text (bertc/text/splits.py), then checked against the fp32 IR on the
calibration pairs with the build's bound:

  embedding/pooled/sequence heads  min over pairs of cos(int8 row, fp32 row)
                                   >= 1 - `max_cosine_loss` (default 0.01)
  classifier head                  argmax agreement of the logits
                                   >= 1 - `max_accuracy_drop` / 100 (default 1.0)

If it misses, bertc's own search puts layers back in f32, most damaging first:
each quantizer's damage is the metric gained by removing it alone from the int8
model (its consumers run on float input then); step k re-quantizes with the top
2^(k-1) quantizers' consumer ops in NNCF's `ignored_scope` (weights and inputs of
those ops stay f32), up to MAX_STEPS steps or every quantizer.  Each step's
metric and the ops kept in f32 go to the log and the manifest.  If no step meets
the bound, BertcError (one line) and no artifact.  (NNCF's own
`quantize_with_accuracy_control` ran over 11 minutes on MiniLM on 2 cores without
finishing; this search costs one compile per quantizer and one quantize per step.)

Ops are named in the IR as TensorFlow named them (`MatMul_8`); the record and the
log also name each op kept in f32 by the checkpoint variable its constant input
holds (`bert/encoder/layer_0/output/dense/kernel`), found by the bytes of the
weight (weight_fingerprints), or as an attention matmul when both inputs are
activations.

The int8 IR keeps the fp32 IR's ports.  What NNCF leaves float (LayerNorm,
Softmax, GELU, the layers kept in f32 above) runs in the build's `int8_rest_dtype`:
the inference precision the IR is compiled with, in the search, in verify and in
serve alike (f32 by default; bf16 on request, faster on AMX but not always within
the bound: BUILD_NOTES.md).  The references stay the fp32 IR at f32.
("Kept in f32" in the log and the manifest's `kept_in_f32` means kept out of int8:
those ops run at the rest's precision too, bf16 when it is bf16.)
"""

import dataclasses
import hashlib
import logging
import os
from typing import Dict, List, Optional, Sequence

import numpy as np

from bertc.errors import BertcError
from bertc.runtime import openvino_settings

logger = logging.getLogger(__name__)

PIN = "nncf==3.4.0"
DEFAULT_MAX_COSINE_LOSS = 0.01
DEFAULT_MAX_ACCURACY_DROP = 1.0  # percentage points of argmax agreement
MAX_STEPS = 4
RANKING_BATCHES = 4


def load_nncf():
    """The `nncf` module; BertcError naming the package when it is missing."""
    try:
        import nncf
    except ImportError as exc:
        raise BertcError(f"`dtype` int8: the nncf package is not installed ({exc}); "
                         f"run: pip install {PIN}") from None
    return nncf


@dataclasses.dataclass(frozen=True)
class Bound:
    """What the int8 model must keep: metric 'min_cos' or 'argmax' of `output`."""

    metric: str
    output: str
    limit: float
    option: str  # the option that set it, for messages

    def describe(self) -> str:
        what = "min cosine" if self.metric == "min_cos" else "argmax agreement"
        return f"{what} of {self.output} >= {self.limit:g} vs fp32"


def check_options(max_cosine_loss: Optional[float], max_accuracy_drop: Optional[float]):
    if max_cosine_loss is not None and max_accuracy_drop is not None:
        raise BertcError("`max_cosine_loss` / `max_accuracy_drop`: expected at most one")
    if max_cosine_loss is not None and not 0 < max_cosine_loss < 1:
        raise BertcError(f"`max_cosine_loss` {max_cosine_loss}: expected a loss in (0, 1)")
    if max_accuracy_drop is not None and not 0 < max_accuracy_drop < 100:
        raise BertcError(f"`max_accuracy_drop` {max_accuracy_drop}: expected percentage "
                         "points in (0, 100)")


def bound_for(head: str, outputs: Sequence[str], max_cosine_loss: Optional[float] = None,
              max_accuracy_drop: Optional[float] = None) -> Bound:
    """The build's bound: argmax of the logits for a classifier head (or when
    `max_accuracy_drop` is given), else the min cosine of the head's first output."""
    check_options(max_cosine_loss, max_accuracy_drop)
    if (head == "classifier" and max_cosine_loss is None) or max_accuracy_drop is not None:
        if "logits" not in outputs:
            raise BertcError(f"`max_accuracy_drop`: head {head} has no logits; expected "
                             "`max_cosine_loss`")
        drop = DEFAULT_MAX_ACCURACY_DROP if max_accuracy_drop is None else max_accuracy_drop
        return Bound("argmax", "logits", 1.0 - drop / 100.0, "max_accuracy_drop")
    loss = DEFAULT_MAX_COSINE_LOSS if max_cosine_loss is None else max_cosine_loss
    output = next((o for o in outputs if o != "probabilities"), outputs[0])
    return Bound("min_cos", output, 1.0 - loss, "max_cosine_loss")


def thresholds(bound: Bound) -> dict:
    """verify's thresholds for an int8 artifact (no max_abs: int8 is not exact)."""
    cosine = bound.limit if bound.metric == "min_cos" else 1.0 - DEFAULT_MAX_COSINE_LOSS
    argmax = bound.limit if bound.metric == "argmax" else 1.0 - DEFAULT_MAX_ACCURACY_DROP / 100
    return {"max_abs": None, "min_cos": round(cosine, 10), "argmax": round(argmax, 10)}


def row_metric(bound: Bound, got: np.ndarray, want: np.ndarray) -> np.ndarray:
    """Per row: cos(got, want) over the flattened row, or argmax agreement (1/0)."""
    got = got.reshape(len(got), -1).astype(np.float64)
    want = want.reshape(len(want), -1).astype(np.float64)
    if bound.metric == "argmax":
        return (got.argmax(-1) == want.argmax(-1)).astype(np.float64)
    norms = np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1)
    return np.where(norms > 0, np.sum(got * want, 1) / np.maximum(norms, 1e-30), 0.0)


def evaluate(compiled, batches: List[dict], references: List[np.ndarray], bound: Bound,
             rows: Optional[int] = None) -> float:
    """The bound's metric of a compiled model on the first `rows` calibration rows
    (min cosine, or mean argmax agreement)."""
    request = compiled.create_infer_request()
    values = []
    for feeds, want in zip(batches, references):
        got = request.infer(feeds)[compiled.output(bound.output)]
        values.append(row_metric(bound, np.array(got), want))
    values = np.concatenate(values)[:rows]
    return float(values.min() if bound.metric == "min_cos" else values.mean())


def quantizers(model) -> Dict[str, List[str]]:
    """{FakeQuantize name: the names of the ops it feeds} of an OpenVINO model."""
    return {op.get_friendly_name(): sorted(i.get_node().get_friendly_name()
                                           for i in op.output(0).get_target_inputs())
            for op in model.get_ops() if op.get_type_name() == "FakeQuantize"}


def weight_fingerprints(weights: Dict[str, np.ndarray]) -> Dict[str, str]:
    """{sha1 of a 2-D weight's float32 bytes, as stored and transposed: its variable
    name}: how an anonymous IR constant is named (layer_names)."""
    out = {}
    for name, value in weights.items():
        value = np.asarray(value)
        if value.ndim == 2 and value.dtype == np.float32:
            for oriented in (value, value.T):
                out[hashlib.sha1(np.ascontiguousarray(oriented).tobytes()).hexdigest()] = name
    return out


def layer_names(model, fingerprints: Dict[str, str]) -> Dict[str, str]:
    """{MatMul op name: the checkpoint variable its constant input holds, or
    'attention (activation x activation)'} of an fp32 OpenVINO model."""
    names = {}
    for op in model.get_ops():
        if op.get_type_name() != "MatMul":
            continue
        constants = [i.get_source_output().get_node() for i in op.inputs()]
        constants = [c for c in constants if c.get_type_name() == "Constant"]
        if not constants:
            names[op.get_friendly_name()] = "attention (activation x activation)"
            continue
        data = np.ascontiguousarray(constants[0].get_data())
        key = hashlib.sha1(data.astype(np.float32).tobytes()).hexdigest()
        names[op.get_friendly_name()] = fingerprints.get(key, "an unnamed constant")
    return names


def named(ops: Sequence[str], names: Dict[str, str]) -> List[str]:
    """'op (variable)' for each op, as the log and the manifest list them."""
    return [f"{op} ({names[op]})" if op in names else op for op in ops]


def _without(model, fq_name: str):
    """A copy of `model` with one FakeQuantize bypassed (its consumers read float)."""
    copy = model.clone()
    for op in copy.get_ops():
        if op.get_friendly_name() == fq_name:
            op.output(0).replace(op.input_value(0))
    return copy


def _quantize(nncf, model, batches: List[dict], ignored: Sequence[str]):
    kwargs = {}
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=list(ignored), validate=False)
    return nncf.quantize(model, nncf.Dataset(batches), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(batches), **kwargs)


def search(model, batches: List[dict], references: List[np.ndarray], bound: Bound,
           compile_fn, rows: int, max_steps: int = MAX_STEPS,
           names: Optional[Dict[str, str]] = None):
    """(int8 model, record): nncf.quantize, then layers back to f32 most damaging
    first until `bound` holds on the calibration rows; BertcError if no step does.
    `names` (layer_names) names the ops kept in f32 in the log and the record."""
    nncf = load_nncf()
    names = names or {}
    quantized = _quantize(nncf, model, batches, ())
    first = quantizers(quantized)
    metric = evaluate(compile_fn(quantized), batches, references, bound, rows)
    steps = [{"step": 0, "call": "nncf.quantize(model_type=TRANSFORMER)",
              "kept_in_f32": [], "quantizers": len(first), "metric": metric,
              "meets": metric >= bound.limit}]
    logger.info("int8 step 0: nncf.quantize, %d quantizers, %s %.6f (bound %g)",
                len(first), bound.metric, metric, bound.limit)
    ranking = []
    if metric < bound.limit and first:
        ranked = []
        for name, consumers in first.items():
            gain = evaluate(compile_fn(_without(quantized, name)), batches[:RANKING_BATCHES],
                            references[:RANKING_BATCHES], bound)
            ranked.append((gain, name, consumers))
        ranked.sort(key=lambda item: -item[0])  # most damaging = largest gain when removed
        ranking = [{"quantizer": n, "feeds": c, "metric_without": g} for g, n, c in ranked]
        count = 1
        for step in range(1, max_steps + 1):
            kept = sorted({op for _, _, consumers in ranked[:count] for op in consumers})
            quantized = _quantize(nncf, model, batches, kept)
            left = quantizers(quantized)
            metric = evaluate(compile_fn(quantized), batches, references, bound, rows)
            steps.append({"step": step, "call": "nncf.quantize(model_type=TRANSFORMER, "
                          f"ignored_scope=<{len(kept)} ops>)", "kept_in_f32": kept,
                          "kept_in_f32_layers": named(kept, names),
                          "quantizers": len(left), "metric": metric,
                          "meets": metric >= bound.limit and bool(left)})
            logger.info("int8 step %d: %d ops kept in f32 (%s), %d quantizers, %s %.6f",
                        step, len(kept), ", ".join(named(kept, names)), len(left),
                        bound.metric, metric)
            if steps[-1]["meets"] or count >= len(ranked) or not left:
                break
            count = min(2 * count, len(ranked))
    best = steps[-1]
    if not best["meets"]:
        raise BertcError(
            f"`{bound.option}`: no int8 model meets {bound.describe()} on the {rows} "
            f"calibration pairs (after {len(steps)} steps: {best['metric']:.6f} with "
            f"{len(best['kept_in_f32'])} ops in f32); artifact not written")
    for entry in ranking:
        entry["feeds_layers"] = named(entry["feeds"], names)
    return quantized, {"bound": dataclasses.asdict(bound), "steps": steps,
                       "ranking": ranking, "kept_in_f32": best["kept_in_f32"],
                       "kept_in_f32_layers": named(best["kept_in_f32"], names),
                       "quantizers": best["quantizers"], "metric": best["metric"]}


def quantize_bucket(artifact_dir: str, compile_record: dict, features: Dict[str, np.ndarray],
                    batch_size: int, bound: Bound,
                    fingerprints: Optional[Dict[str, str]] = None,
                    rest_precision: str = "f32") -> dict:
    """Quantizes one bucket's IR in place (model.xml/.bin) on the calibration
    `features` (int32 [N, S]); returns the manifest record of the search.
    `fingerprints` (weight_fingerprints of the checkpoint) name the layers; the
    int8 candidates compile at `rest_precision` (OpenVINO's name), as served."""
    from bertc.runtime import openvino_runner
    ov = openvino_settings.load()
    xml = os.path.join(artifact_dir, compile_record["ir"])
    from bertc.verify import compare as verify_lib
    rows = len(features["input_ids"])
    # the last batch filled with all-zero dummy rows, as the server pads; not counted (rows)
    batches = [b.feeds for b in verify_lib.pad_rows(features, batch_size)]
    properties = openvino_settings.served_properties(rest_precision)
    core = ov.Core()
    model = core.read_model(xml)
    fp32 = openvino_runner.compile_ir(xml, openvino_settings.served_properties("f32"))
    request = fp32.create_infer_request()
    references = [np.array(request.infer(b)[fp32.output(bound.output)]) for b in batches]
    del request, fp32
    quantized, record = search(model, batches, references, bound,
                               lambda m: core.compile_model(m, "CPU", properties), rows,
                               names=layer_names(model, fingerprints or {}))
    # the fp32 IR is memory-mapped by `model`: write beside it, then rename over it
    staged = xml[:-len(".xml")] + ".int8.xml"
    ov.save_model(quantized, staged, compress_to_fp16=False)
    del quantized, model
    for suffix in (".xml", ".bin"):
        os.replace(staged[:-len(".xml")] + suffix, xml[:-len(".xml")] + suffix)
    record["calibration_rows"] = rows
    record["rest_precision"] = rest_precision
    logger.info("openvino int8: %s, %d quantizers, the rest in %s, kept in f32: %s; %s "
                "%.6f on %d calibration pairs", compile_record["ir"], record["quantizers"],
                rest_precision,
                ", ".join(record["kept_in_f32_layers"]) or "none", bound.metric,
                record["metric"], rows)
    return record
