"""Use a trained run: apply it to audio files, export it (TorchScript, ONNX), and stream it."""
