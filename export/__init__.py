"""Turn a checkpoint into the artifact directory the service reads: ONNX graphs, tokenizer.json, manifest.json."""
