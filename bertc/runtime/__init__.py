"""Running graphs: the one Session runner (served / as written), TensorFlow's
runtime settings, the CPU's ISA. May import: bertc.artifact, bertc.model, bertc.errors, rewrites.
"""
