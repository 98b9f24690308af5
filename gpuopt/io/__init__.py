"""Readers and writers for external file formats (VNNLIB, ONNX, VNN-COMP results)."""
