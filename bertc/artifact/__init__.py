"""The artifact format: the manifest, SavedModel writing and streaming reading
(protobuf wire format), the TF Serving files. May import: bertc.model, bertc.runtime.machine,
bertc.errors, rewrites.
"""
