"""Text in: WordPiece tokenization, the MRPC/TSV and text readers, feature building.
May import: bertc.errors.
"""
