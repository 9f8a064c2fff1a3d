"""Where weights come from: Google TF1 checkpoints, BERT SavedModels, Hugging Face
directories (converted to Google format), the embedded default, weight validation.
May import: bertc.model, bertc.errors.
"""
