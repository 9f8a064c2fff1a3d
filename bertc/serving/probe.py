"""The serve-time proof: before a server answers anyone, every bucket's probe
(bertc.artifact.probe: rows of verify's text and the fp32 reference's outputs on them,
kept at build) runs through the loaded model, and its outputs are held to the bounds
verify proved at build (the manifest's verify thresholds, bertc.runtime.agreement).

Checksums show the files are the ones built; the probe shows that this CPU, with this
runtime, computes with them what verify measured where the artifact was built (an int8
or bf16 artifact moved to a CPU without VNNI or native bf16, another OpenVINO or
TensorFlow, a Ray node unlike the head).  A bucket out of bounds stops the server with
one line naming it, the failing statistic, this CPU and the build's; `skip_probe`
serves it anyway, with a warning.  An artifact built without verify (or before probes
were kept) has none, and a warning says that its outputs were not checked here.
"""

import logging

import numpy as np

from bertc.artifact import probe as probe_files
from bertc.errors import CheckFailed
from bertc.runtime import agreement, machine

logger = logging.getLogger(__name__)


def check(model, art, skip_probe: bool = False) -> dict:
    """Runs each bucket's probe through `model` (run(seq_len, int32 [B, S] inputs in
    art.inputs order) -> {output: [B, ...]}) and returns what the server reports of it
    (GET /v1/models/<name>): {'status': 'passed' | 'skipped' (skip_probe) | 'absent' (no
    probe kept), 'cpu': this CPU, 'built_on': the build's, 'per_seq_len': {S: per-output
    statistics}}.  Raises CheckFailed on the first bucket outside the manifest's verify
    thresholds."""
    here, built = machine.cpu_model(), (art.manifest.get("built_on") or {}).get("model")
    results = {"status": "skipped", "cpu": here, "built_on": built, "per_seq_len": {}}
    if skip_probe:
        logger.warning("%s: `skip_probe` set; the artifact's outputs are not checked on "
                       "this CPU against the bounds verify proved", art.path)
        return results
    entries = [e for e in art.manifest["models"] if e.get("probe")]
    if not entries:
        logger.warning("%s: no probe (built without verify, or by a bertc before probes "
                       "were kept); its outputs are not checked on this CPU", art.path)
        return {**results, "status": "absent"}
    thresholds = art.manifest["verify"]["thresholds"]
    for entry in sorted(entries, key=lambda e: e["seq_len"]):
        seq_len, record = int(entry["seq_len"]), entry["probe"]
        feeds, rows, want = probe_files.read(art.path, record)
        outputs = model.run(seq_len, [feeds[name] for name in art.inputs])
        got = {name: np.asarray(value)[:rows] for name, value in outputs.items()}
        batch = agreement.Batch(feeds, rows)
        stats = agreement.compare_results([got], [want], [batch])
        failures = agreement.check(stats, thresholds)
        if failures:
            raise CheckFailed(
                f"{art.path}: seq {seq_len} probe ({rows} rows of "
                f"{record.get('source') or 'random ids'}): "
                f"{'; '.join(failures)} against the fp32 reference on this CPU ({here}; built and "
                f"verified on {built or 'an unrecorded CPU'}); expected the bounds verify "
                "proved at build. Run `bertc verify` here (it needs the source checkpoint) "
                "to see every output, or pass `skip_probe` to serve it anyway")
        for name, s in stats.items():
            logger.info("probe seq %d %s: %d rows, max_abs %.3g, min_cos %.7f%s (built: "
                        "min_cos %.7f); within verify's bounds on %s", seq_len, name, rows,
                        s["max_abs"], s["min_cos"],
                        f", argmax {s['argmax']:.4f}" if "argmax" in s else "",
                        record["built"][name]["min_cos"], here)
        results["per_seq_len"][str(seq_len)] = stats
    return {**results, "status": "passed"}
