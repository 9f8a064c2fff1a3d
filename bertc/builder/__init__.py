"""`bertc build`: the pipeline (read, trace, freeze, rewrite, export, compile,
verify), pass selection, stages, atomic output, targets.
May import: everything below it (sources, model, text, artifact, runtime, verify).
"""
