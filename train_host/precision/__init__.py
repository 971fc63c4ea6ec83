"""Precision variants of an exported graph: FP16 conversion, INT8 QDQ quantization, and
the accuracy checks that decide whether a variant may ship.

Precision lives in the ONNX itself (an FP16 graph; explicit QDQ nodes for INT8), so a
TensorRT engine can be built strongly typed from it (see docs/precision.md).
"""

PRECISIONS = ("fp32", "fp16", "int8")
VARIANT_FILES = {"fp32": "model.onnx", "fp16": "model.fp16.onnx", "int8": "model.int8.onnx"}
