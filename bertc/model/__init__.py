"""The model: its config, the checkpoint's variable names, the TensorFlow BERT and
freezing it into a GraphDef. May import: bertc.errors, rewrites.
"""
