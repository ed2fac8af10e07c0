"""Weights of other frameworks: the PyTorch name table, reading weights from any source, import, export and features."""
