"""Train the bundled simple CNNs in pure NumPy, on the engine's own forward and ``vjp``.

Run ``python -m rlrp_ref.train --dataset shapes --out simple_cnn_shapes.h5`` (or
``--dataset digits``). The script prints the loss per epoch and the test
accuracy, and writes the weights as HDF5 in the Keras legacy layout (see
:func:`save_keras_h5`). The shipped files in ``rlrp_ref/data/weights/`` were
made by exactly this command with the default options.

The pieces, each checkable by hand:

- loss: softmax cross-entropy of the logits ``z`` and labels ``y``, averaged
  over the batch; its gradient is ``(softmax(z) - onehot(y)) / N``;
- parameter gradients (:func:`parameter_gradients`): one backward sweep over the
  layers of a :class:`~rlrp_ref.model.Sequential`, reading each layer's input
  from the forward trace. With ``g`` the gradient at a layer's output:

  - Dense: ``dW = x^T g``, ``db = sum_n g``;
  - Conv2D: ``dW = im2col(pad(x))^T g`` reshaped to ``(kh, kw, cin, cout)``,
    ``db = sum_{n,p,q} g`` (the same im2col matrix the forward GEMM reads);

  and ``g`` moves to the layer's input with the layer's ``vjp``;
- optimizer: Adam (Kingma and Ba, 2015) with bias correction;
- fixed seeds for the initial weights and the minibatch order, so a run is
  reproducible on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from . import kernels
from .layers import Conv2D, Dense
from .model import Container, Sequential

__all__ = [
    "softmax_cross_entropy",
    "parameter_gradients",
    "Adam",
    "fit",
    "predict_logits",
    "accuracy",
    "save_keras_h5",
    "train_dataset",
    "main",
]

#: Training settings of the shipped weights, per dataset.
DEFAULTS = {
    "shapes": {"epochs": 8, "batch_size": 64, "learning_rate": 2e-3, "seed": 0},
    "digits": {"epochs": 40, "batch_size": 32, "learning_rate": 2e-3, "seed": 0},
}


def softmax_cross_entropy(logits: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean cross-entropy ``-(1/N) sum_n log softmax(z_n)[y_n]`` and its gradient w.r.t. the logits.

    Uses ``log softmax(z) = z - max z - log sum exp(z - max z)`` for stability.
    """
    logits = np.asarray(logits)
    labels = np.asarray(labels)
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_norm = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    log_probs = shifted - log_norm
    rows = np.arange(n)
    loss = float(-log_probs[rows, labels].mean())
    grad = np.exp(log_probs)
    grad[rows, labels] -= 1
    return loss, grad / n


def _conv_kernel_gradient(layer: Conv2D, x: np.ndarray, grad: np.ndarray) -> np.ndarray:
    """``dW = im2col(pad(x))^T @ g``: the transpose of the forward GEMM, as ``(kh, kw, cin, cout)``."""
    kh, kw, cin, cout = layer.kernel.shape
    xp = kernels.pad_nhwc(x, layer.pads(x.shape[1:3]))
    cols = kernels.im2col(xp, (kh, kw), layer.strides)
    return (cols.T @ grad.reshape(-1, cout)).reshape(kh, kw, cin, cout)


def parameter_gradients(model: Sequential, x: np.ndarray, grad_output: np.ndarray, trace=None):
    """Gradients of ``sum(grad_output * model(x))`` w.r.t. every Dense/Conv2D parameter, and w.r.t. ``x``.

    ``model`` must be a flat :class:`Sequential` (no nested containers). Returns
    ``(grads, grad_input)`` with ``grads[layer_name] = {"kernel": ..., "bias": ...}``
    (``bias`` only for layers that have one). Pass ``trace`` to reuse a forward pass.
    """
    if not isinstance(model, Sequential) or any(isinstance(layer, Container) for layer in model.layers):
        raise ValueError(f"parameter_gradients: expected a flat Sequential model, found {type(model).__name__} {getattr(model, 'name', '')!r}")
    record = trace if trace is not None else model.trace(x)
    grad = np.asarray(grad_output)
    grads: dict[str, dict[str, np.ndarray]] = {}
    for layer, layer_input in zip(reversed(model.layers), reversed(model.inputs_from(record, x))):
        if isinstance(layer, Dense):
            grads[layer.name] = {"kernel": layer_input.T @ grad}
        elif isinstance(layer, Conv2D):
            grads[layer.name] = {"kernel": _conv_kernel_gradient(layer, layer_input, grad)}
        elif layer.params:
            raise ValueError(f"parameter_gradients: {layer.desc} has parameters but no gradient rule here")
        if layer.name in grads and layer.bias is not None:
            grads[layer.name]["bias"] = grad.reshape(-1, grad.shape[-1]).sum(axis=0)
        grad = layer.vjp(layer_input, grad)
    return grads, grad


class Adam:
    """Adam: ``m = b1 m + (1-b1) g``, ``v = b2 v + (1-b2) g^2``,
    ``p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)``.

    Updates the parameters of ``model``'s layers in place.
    """

    def __init__(self, model: Sequential, learning_rate=1e-3, beta1=0.9, beta2=0.999, eps=1e-7):
        self.model = model
        self.learning_rate = float(learning_rate)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.step_count = 0
        self.moments = {
            (layer.name, key): (np.zeros_like(value), np.zeros_like(value))
            for layer in model.iter_layers()
            for key, value in layer.params.items()
        }

    def step(self, grads) -> None:
        """One update from ``grads[layer name][parameter name]`` (layers or parameters absent there are left alone)."""
        self.step_count += 1
        t = self.step_count
        correction1 = 1 - self.beta1**t
        correction2 = 1 - self.beta2**t
        for layer in self.model.iter_layers():
            for key, grad in grads.get(layer.name, {}).items():
                m, v = self.moments[(layer.name, key)]
                m *= self.beta1
                m += (1 - self.beta1) * grad
                v *= self.beta2
                v += (1 - self.beta2) * grad * grad
                param = getattr(layer, key)
                param -= (self.learning_rate * (m / correction1) / (np.sqrt(v / correction2) + self.eps)).astype(param.dtype)


def predict_logits(model, x: np.ndarray, batch_size: int = 500) -> np.ndarray:
    """Logits of ``x`` computed in minibatches (bounds memory)."""
    return np.concatenate([model.forward(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def accuracy(model, x: np.ndarray, labels: np.ndarray, batch_size: int = 500) -> float:
    """Fraction of samples whose top logit is the label."""
    return float(np.mean(predict_logits(model, x, batch_size).argmax(axis=1) == labels))


def fit(model: Sequential, x, labels, epochs: int, batch_size: int, learning_rate: float, seed: int = 0, log=None):
    """Minibatch Adam on softmax cross-entropy; the minibatch order comes from ``seed``.

    ``log(epoch, mean_loss)`` is called after each epoch when given. Returns the
    list of per-epoch mean losses.
    """
    rng = np.random.default_rng(seed)
    optimizer = Adam(model, learning_rate)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for start in range(0, len(x), batch_size):
            batch = order[start : start + batch_size]
            xb = x[batch]
            record = model.trace(xb)
            loss, grad_logits = softmax_cross_entropy(record.output, labels[batch])
            grads, _ = parameter_gradients(model, xb, grad_logits.astype(xb.dtype), trace=record)
            optimizer.step(grads)
            losses.append(loss)
        history.append(float(np.mean(losses)))
        if log is not None:
            log(epoch + 1, history[-1])
    return history


def _keras_class(layer) -> str:
    return {
        "conv2d": "Conv2D",
        "dense": "Dense",
        "max_pooling2d": "MaxPooling2D",
        "average_pooling2d": "AveragePooling2D",
        "global_average_pooling2d": "GlobalAveragePooling2D",
        "flatten": "Flatten",
        "zero_padding2d": "ZeroPadding2D",
        "batch_normalization": "BatchNormalization",
    }[layer.kind]


def save_keras_h5(model: Sequential, path, extra_attrs: dict | None = None) -> None:
    """Write ``model``'s weights as HDF5 in the Keras legacy (``model.save(..."h5")``) layout.

    ``/model_weights`` has attributes ``layer_names`` (every non-ReLU layer, in
    order: in the Keras model each ReLU is the ``activation`` of the layer
    before it), ``backend`` and ``keras_version``; each layer is a group
    ``/model_weights/<layer>`` with attribute ``weight_names``
    (``<layer>/kernel:0``, ``<layer>/bias:0``) and its arrays at
    ``/model_weights/<layer>/<layer>/kernel:0`` etc. Layers without weights
    have an empty ``weight_names``. The file is written all or nothing.
    """
    import h5py

    from .outputs import staged_file

    layers = [layer for layer in model.iter_layers() if layer.kind != "relu"]
    with staged_file(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.attrs["backend"] = "numpy"
            f.attrs["keras_version"] = "2.x-compatible (written by rlrp_ref.train)"
            layer_configs = [{"class_name": _keras_class(layer), "config": {"name": layer.name}} for layer in layers]
            f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": {"name": model.name, "layers": layer_configs}})
            for key, value in (extra_attrs or {}).items():
                f.attrs[key] = value
            weights = f.create_group("model_weights")
            weights.attrs["backend"] = "numpy"
            weights.attrs["keras_version"] = f.attrs["keras_version"]
            weights.attrs["layer_names"] = np.array([layer.name.encode() for layer in layers], dtype="S")
            for layer in layers:
                group = weights.create_group(layer.name)
                names = [f"{layer.name}/{key}:0" for key in layer.params]
                group.attrs["weight_names"] = np.array([n.encode() for n in names], dtype="S")
                for name, value in zip(names, layer.params.values()):
                    group.create_dataset(name, data=value)


def load_dataset(name: str, dtype=np.float32):
    """``(x_train, y_train, x_test, y_test)`` of a bundled dataset (``"shapes"`` or ``"digits"``)."""
    from .data import digits, shapes

    if name == "shapes":
        x_train, y_train, _ = shapes.load_split("train", dtype=dtype)
        x_test, y_test, _ = shapes.load_split("test", dtype=dtype)
    elif name == "digits":
        x_train, y_train = digits.load_split("train", dtype=dtype)
        x_test, y_test = digits.load_split("test", dtype=dtype)
    else:
        raise ValueError(f"unknown dataset {name!r}: expected 'shapes' or 'digits'")
    return x_train, y_train, x_test, y_test


def train_dataset(name: str, epochs=None, batch_size=None, learning_rate=None, seed=None, log=None):
    """Build and train the simple CNN on a bundled dataset; return ``(model, test_accuracy)``."""
    from .models.simple_cnn import DATASET_CONFIGS, build_simple_cnn

    if name not in DEFAULTS:
        raise ValueError(f"unknown dataset {name!r}: expected 'shapes' or 'digits'")
    settings = dict(DEFAULTS[name])
    for key, value in (("epochs", epochs), ("batch_size", batch_size), ("learning_rate", learning_rate), ("seed", seed)):
        if value is not None:
            settings[key] = value
    x_train, y_train, x_test, y_test = load_dataset(name)
    model = build_simple_cnn(**DATASET_CONFIGS[name], seed=settings["seed"], dtype="float32", name=f"simple_cnn_{name}")
    fit(model, x_train, y_train, settings["epochs"], settings["batch_size"], settings["learning_rate"], settings["seed"], log=log)
    return model, accuracy(model, x_test, y_test)


def main(argv=None) -> int:
    """Command line: train on ``--dataset``, print the test accuracy, write ``--out``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m rlrp_ref.train", description="Train the simple CNN on a bundled dataset (pure NumPy).")
    parser.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    parser.add_argument("--out", required=True, help="HDF5 weights file to write (Keras legacy layout)")
    parser.add_argument("--epochs", type=int, help="default: per dataset (shapes 8, digits 40)")
    parser.add_argument("--batch-size", type=int)
    parser.add_argument("--learning-rate", type=float)
    parser.add_argument("--seed", type=int)
    args = parser.parse_args(argv)

    out = Path(args.out)
    if not (out.parent if str(out.parent) else Path(".")).is_dir():
        print(f"train: error: folder of --out {out} does not exist", file=sys.stderr)
        return 2
    start = time.perf_counter()

    def log(epoch, loss):
        print(f"epoch {epoch:3d}  loss {loss:.4f}  ({time.perf_counter() - start:.1f} s)", flush=True)

    model, test_accuracy = train_dataset(args.dataset, args.epochs, args.batch_size, args.learning_rate, args.seed, log=log)
    print(f"test accuracy ({args.dataset}): {test_accuracy:.4f}")
    save_keras_h5(model, out, extra_attrs={"rlrp_ref_dataset": args.dataset, "rlrp_ref_test_accuracy": test_accuracy})
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
