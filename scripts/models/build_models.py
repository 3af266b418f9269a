#!/usr/bin/env python3
"""Builds the small ONNX models Eddy's tests and examples use, and their reference outputs.

Usage: build_models.py OUT_DIR            test models and references
       build_models.py --examples OUT_DIR the README's example models (examples/models)

Test models (OUT_DIR/<name>.onnx, with OUT_DIR/<name>.json holding the fixed inputs and the
outputs onnxruntime computes for them in Python):

  linear    y = x @ w + b over 3 features (onnx helper API)
  mlp       4 -> 8 (relu) -> 1 multilayer perceptron (onnx helper API)
  gbt       scikit-learn GradientBoostingRegressor, 60 trees over 5 features (skl2onnx)
  logistic  scikit-learn LogisticRegression, 3 classes over 4 features; label + probability
            tensor outputs (skl2onnx, zipmap off)
  churn     scikit-learn LogisticRegression with text labels and skl2onnx's default ZipMap
            output (a sequence of label -> probability maps)
  lookup    y = table[int(x)]: fails at run time when x is outside 0..9 (for the dead-letter
            test)
  pair      two inputs, "temp" and "vibration", each [batch, 1] (features by name)

The JSON holds "inputs" (rows of features) and "outputs" (the first output, one value per
row: the prediction of a regressor, the label of a classifier) and, for classifiers,
"probabilities" (one list per row, classes in label order).

Nothing is downloaded: models are built from fixed pseudo-random data. Needs numpy, onnx,
onnxruntime, scikit-learn and skl2onnx (scripts/setup.sh installs them into .tools/onnx).
"""

import json
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper
import onnxruntime as ort

OPSET = 17


def graph_model(name, nodes, inputs, outputs, initializers):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    onnx.checker.check_model(model)
    return model


def floats(name, array):
    return helper.make_tensor(name, TensorProto.FLOAT, array.shape, array.flatten())


def linear(w, b, width, input_name="x"):
    """y = x @ w + b."""
    w = np.array(w, dtype=np.float32).reshape(width, 1)
    b = np.array([b], dtype=np.float32)
    return graph_model(
        "linear",
        [
            helper.make_node("MatMul", [input_name, "w"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["y"]),
        ],
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [None, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [floats("w", w), floats("b", b)],
    )


def mlp():
    """A 4 -> 8 (relu) -> 1 multilayer perceptron with fixed pseudo-random weights."""
    rng = np.random.default_rng(7)
    w1 = rng.normal(size=(4, 8)).astype(np.float32)
    b1 = rng.normal(size=(8,)).astype(np.float32)
    w2 = rng.normal(size=(8, 1)).astype(np.float32)
    b2 = rng.normal(size=(1,)).astype(np.float32)
    return graph_model(
        "mlp",
        [
            helper.make_node("Gemm", ["x", "w1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["hr"]),
            helper.make_node("Gemm", ["hr", "w2", "b2"], ["y"]),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [floats(n, a) for n, a in [("w1", w1), ("b1", b1), ("w2", w2), ("b2", b2)]],
    )


def lookup():
    """y = table[int(x)] for x in 0..9; other values make Gather fail at run time."""
    table = (np.arange(10, dtype=np.float32) * 10.0).reshape(10)
    return graph_model(
        "lookup",
        [
            helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64),
            helper.make_node("Gather", ["table", "i"], ["y"], axis=0),
        ],
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [floats("table", table)],
    )


def pair():
    """Two named inputs: y = 2 * temp - vibration."""
    return graph_model(
        "pair",
        [
            helper.make_node("Mul", ["temp", "two"], ["t2"]),
            helper.make_node("Sub", ["t2", "vibration"], ["y"]),
        ],
        [
            helper.make_tensor_value_info("temp", TensorProto.FLOAT, [None, 1]),
            helper.make_tensor_value_info("vibration", TensorProto.FLOAT, [None, 1]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
        [floats("two", np.array([2.0], dtype=np.float32))],
    )


def sklearn_models():
    from sklearn.ensemble import GradientBoostingRegressor
    from sklearn.linear_model import LogisticRegression
    from skl2onnx import to_onnx

    rng = np.random.default_rng(11)
    x5 = rng.uniform(-5, 5, size=(400, 5)).astype(np.float32)
    y5 = np.sin(x5[:, 0]) * 3 + x5[:, 1] * x5[:, 2] - np.abs(x5[:, 3]) + 0.1 * x5[:, 4]
    gbt = GradientBoostingRegressor(n_estimators=60, max_depth=3, random_state=0).fit(x5, y5)

    x4 = rng.uniform(-5, 5, size=(300, 4)).astype(np.float32)
    score = x4[:, 0] - 0.5 * x4[:, 1] + 0.25 * x4[:, 2] * x4[:, 3]
    y3 = np.digitize(score, [-1.5, 1.5])  # classes 0, 1, 2
    logistic = LogisticRegression(max_iter=500).fit(x4, y3)
    words = np.where(score > 0, "leave", "stay")
    churn = LogisticRegression(max_iter=500).fit(x4, words)

    return [
        ("gbt", to_onnx(gbt, x5[:1], target_opset={"": OPSET, "ai.onnx.ml": 3}), 5),
        (
            "logistic",
            to_onnx(
                logistic,
                x4[:1],
                options={id(logistic): {"zipmap": False}},
                target_opset={"": OPSET, "ai.onnx.ml": 3},
            ),
            4,
        ),
        ("churn", to_onnx(churn, x4[:1], target_opset={"": OPSET, "ai.onnx.ml": 3}), 4),
    ]


def reference(path, inputs, names):
    """The outputs of onnxruntime in Python for `inputs` (one feature per input when the
    model has several inputs)."""
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    if len(names) == 1:
        feeds = {names[0]: inputs}
    else:
        feeds = {n: inputs[:, [j]] for j, n in enumerate(names)}
    outs = session.run(None, feeds)
    result = {"inputs": inputs.tolist(), "outputs": np.asarray(outs[0]).reshape(-1).tolist()}
    if len(outs) > 1:
        probs = outs[1]
        if isinstance(probs, list):  # ZipMap: one {label: probability} per row
            probs = [[row[k] for k in sorted(row)] for row in probs]
        result["probabilities"] = np.asarray(probs, dtype=np.float64).tolist()
    return result


def build_tests(out):
    rng = np.random.default_rng(42)
    models = [
        ("linear", linear([0.5, -1.25, 2.0], 0.75, 3), 3),
        ("mlp", mlp(), 4),
        ("lookup", lookup(), 1),
        ("pair", pair(), 2),
    ] + sklearn_models()
    for name, model, width in models:
        path = os.path.join(out, f"{name}.onnx")
        onnx.save(model, path)
        if name == "lookup":
            inputs = rng.integers(0, 10, size=(64, 1)).astype(np.float32)
        else:
            inputs = rng.uniform(-10, 10, size=(64, width)).astype(np.float32)
        names = [i.name for i in model.graph.input]
        with open(os.path.join(out, f"{name}.json"), "w") as f:
            json.dump(reference(path, inputs, names), f)
    print(f"models written to {out}")


def build_examples(out):
    """The README's example: an anomaly score over (temperature, vibration), two versions."""
    for version, (w, b) in enumerate([([0.02, 1.5], -2.0), ([0.05, 1.0], -3.0)], start=1):
        model = linear(w, b, 2, input_name="features")
        onnx.save(model, os.path.join(out, f"anomaly_v{version}.onnx"))
    print(f"example models written to {out}")


def main():
    if sys.argv[1] == "--examples":
        out = sys.argv[2]
        os.makedirs(out, exist_ok=True)
        build_examples(out)
    else:
        out = sys.argv[1]
        os.makedirs(out, exist_ok=True)
        build_tests(out)


if __name__ == "__main__":
    main()
