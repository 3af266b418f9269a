#!/usr/bin/env python3
"""Builds the small ONNX models Eddy's tests use, and their reference outputs.

Usage: build_models.py OUT_DIR

Writes OUT_DIR/<name>.onnx and OUT_DIR/<name>.json ({"inputs": [[...], ...], "outputs":
[...]}) where the outputs are computed by onnxruntime in Python on a fixed input set, so
Eddy's PREDICT can be compared with the reference runtime. Nothing is downloaded: the models
are built with the onnx helper API. Needs the `onnx`, `onnxruntime` and `numpy` packages
(scripts/setup.sh installs them into .tools/onnx).
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort


def linear_regressor():
    """y = x @ w + b over 3 float features."""
    w = np.array([[0.5], [-1.25], [2.0]], dtype=np.float32)
    b = np.array([0.75], dtype=np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor("w", TensorProto.FLOAT, w.shape, w.flatten()),
            helper.make_tensor("b", TensorProto.FLOAT, b.shape, b.flatten()),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def mlp():
    """A 4 -> 8 (relu) -> 1 multilayer perceptron with fixed pseudo-random weights."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(4, 8)).astype(np.float32)
    b1 = rng.normal(size=(8,)).astype(np.float32)
    w2 = rng.normal(size=(8, 1)).astype(np.float32)
    b2 = rng.normal(size=(1,)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [
            helper.make_tensor(n, TensorProto.FLOAT, a.shape, a.flatten())
            for n, a in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    rng = np.random.default_rng(42)
    for name, model, width in [("linear", linear_regressor(), 3), ("mlp", mlp(), 4)]:
        onnx.checker.check_model(model)
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(model, path)
        inputs = rng.uniform(-10, 10, size=(64, width)).astype(np.float32)
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        outputs = session.run(None, {"x": inputs})[0].reshape(-1)
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump({"inputs": inputs.tolist(), "outputs": outputs.tolist()}, f)
    print(f"models written to {out}")


if __name__ == "__main__":
    main()
