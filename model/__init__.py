"""Our Transformer encoder in PyTorch, written the way the architecture is explained, plus a checkpoint loader.

Only export/ and tests import this package: the service reads ONNX artifacts and never imports torch.
"""

from model.checkpoint import CheckpointError, LoadedCheckpoint, load_checkpoint
from model.config import DenseConfig, EncoderConfig, PoolingConfig
from model.encoder import Encoder, EncoderOutput

__all__ = [
    "CheckpointError",
    "DenseConfig",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "LoadedCheckpoint",
    "PoolingConfig",
    "load_checkpoint",
]
