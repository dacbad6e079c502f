"""Embedding server: onnxruntime behind FastAPI, reading only the artifact directory (docs/contract.md)."""

__version__ = "0.1.0"
