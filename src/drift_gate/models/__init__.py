"""Models: backbones, pretrained weights, checkpoints, inference and ONNX export."""
