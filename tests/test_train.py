"""The NumPy training script: loss, parameter gradients, Adam, the HDF5 writer, the entry point."""

import h5py
import numpy as np
import pytest

import rlrp_ref as rr
from rlrp_ref import train
from rlrp_ref.models.simple_cnn import build_simple_cnn


def tiny_net(rng, dtype=np.float64):
    """Every parameter kind train.py handles: strided 'same' conv, 'valid' conv, max pool, dense."""
    return rr.Sequential([
        rr.Conv2D(rng.standard_normal((3, 3, 2, 3)) * 0.5, rng.standard_normal(3) * 0.1, strides=2, padding="same", name="c1"),
        rr.ReLU(name="r1"),
        rr.Conv2D(rng.standard_normal((2, 2, 3, 4)) * 0.5, rng.standard_normal(4) * 0.1, padding="valid", name="c2"),
        rr.ReLU(name="r2"),
        rr.MaxPool2D(2, name="p"),
        rr.Flatten(name="f"),
        rr.Dense(rng.standard_normal((4, 5)) * 0.5, rng.standard_normal(5) * 0.1, name="d1"),
        rr.ReLU(name="r3"),
        rr.Dense(rng.standard_normal((5, 3)) * 0.5, None, name="d2"),
    ], name="tiny").astype(np.float64)


def loss_of(model, x, labels):
    return train.softmax_cross_entropy(model.forward(x), labels)[0]


def test_softmax_cross_entropy_value_and_gradient(rng):
    logits = rng.standard_normal((4, 5)) * 3
    labels = np.array([0, 4, 2, 2])
    loss, grad = train.softmax_cross_entropy(logits, labels)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    assert loss == pytest.approx(-np.mean(np.log(probs[np.arange(4), labels])), rel=1e-12)
    eps = 1e-6
    numeric = np.zeros_like(logits)
    for idx in np.ndindex(*logits.shape):
        plus, minus = logits.copy(), logits.copy()
        plus[idx] += eps
        minus[idx] -= eps
        numeric[idx] = (train.softmax_cross_entropy(plus, labels)[0] - train.softmax_cross_entropy(minus, labels)[0]) / (2 * eps)
    np.testing.assert_allclose(grad, numeric, rtol=1e-6, atol=1e-9)
    # huge logits stay finite
    loss, grad = train.softmax_cross_entropy(np.array([[1e4, -1e4]]), np.array([1]))
    assert np.isfinite(loss) and loss == pytest.approx(2e4) and np.all(np.isfinite(grad))


def test_parameter_gradients_match_finite_differences(rng):
    model = tiny_net(rng)
    x = rng.standard_normal((3, 6, 6, 2))
    labels = np.array([0, 2, 1])
    _, grad_logits = train.softmax_cross_entropy(model.forward(x), labels)
    grads, grad_input = train.parameter_gradients(model, x, grad_logits)
    assert set(grads) == {"c1", "c2", "d1", "d2"}
    assert set(grads["d2"]) == {"kernel"}  # no bias, no bias gradient
    eps = 1e-6
    for layer in model.iter_layers():
        for key, value in layer.params.items():
            numeric = np.zeros_like(value)
            for idx in np.ndindex(*value.shape):
                saved = value[idx]
                value[idx] = saved + eps
                up = loss_of(model, x, labels)
                value[idx] = saved - eps
                down = loss_of(model, x, labels)
                value[idx] = saved
                numeric[idx] = (up - down) / (2 * eps)
            np.testing.assert_allclose(grads[layer.name][key], numeric, rtol=1e-5, atol=1e-8, err_msg=f"{layer.name}.{key}")
    # the input gradient is the model's own vjp
    np.testing.assert_allclose(grad_input, model.vjp(x, grad_logits), rtol=1e-12, atol=1e-14)


def test_parameter_gradients_reject_nested_containers(rng):
    inner = rr.Sequential([rr.Dense(rng.standard_normal((2, 2)), name="d")], name="inner")
    outer = rr.Sequential([inner], name="outer")
    with pytest.raises(ValueError, match="flat Sequential"):
        train.parameter_gradients(outer, np.ones((1, 2)), np.ones((1, 2)))


def test_adam_first_step_moves_each_parameter_by_the_learning_rate(rng):
    model = rr.Sequential([rr.Dense(np.array([[1.0, -2.0]]), np.array([0.5, 0.0]), name="d")], name="m")
    optimizer = train.Adam(model, learning_rate=0.1, eps=0.0)
    optimizer.step({"d": {"kernel": np.array([[3.0, -0.5]]), "bias": np.array([-4.0, 2.0])}})
    # with bias correction, step one is p -= lr * g / |g|
    np.testing.assert_allclose(model[0].kernel, [[0.9, -1.9]])
    np.testing.assert_allclose(model[0].bias, [0.6, -0.1])
    optimizer.step({"d": {"kernel": np.array([[1.0, 1.0]]), "bias": np.array([0.0, 0.0])}})
    m = 0.9 * 0.1 * np.array([3.0, -0.5]) + 0.1 * np.array([1.0, 1.0])
    v = 0.999 * 0.001 * np.array([9.0, 0.25]) + 0.001 * np.array([1.0, 1.0])
    expected = np.array([0.9, -1.9]) - 0.1 * (m / (1 - 0.81)) / np.sqrt(v / (1 - 0.999**2))
    np.testing.assert_allclose(model[0].kernel[0], expected, rtol=1e-12)


def test_fit_learns_and_is_reproducible(rng):
    x = rng.standard_normal((200, 4, 4, 1))
    labels = (x[:, :2].sum(axis=(1, 2, 3)) > x[:, 2:].sum(axis=(1, 2, 3))).astype(np.int64)
    models = []
    for _ in range(2):
        model = build_simple_cnn((4, 4, 1), 2, seed=3, dtype="float64")
        history = train.fit(model, x, labels, epochs=15, batch_size=20, learning_rate=1e-2, seed=5)
        assert history[-1] < 0.5 * history[0]
        models.append(model)
    assert train.accuracy(models[0], x, labels) > 0.9
    for a, b in zip(models[0].iter_layers(), models[1].iter_layers()):
        for key in a.params:
            np.testing.assert_array_equal(a.params[key], b.params[key])


def test_save_keras_h5_layout(tmp_path, rng):
    model = tiny_net(rng)
    path = tmp_path / "w.h5"
    train.save_keras_h5(model, path)
    with h5py.File(path, "r") as f:
        group = f["model_weights"]
        names = [n.decode() for n in group.attrs["layer_names"]]
        assert names == ["c1", "c2", "p", "f", "d1", "d2"]  # ReLUs are the Keras layers' activations
        assert [n.decode() for n in group["c1"].attrs["weight_names"]] == ["c1/kernel:0", "c1/bias:0"]
        assert [n.decode() for n in group["d2"].attrs["weight_names"]] == ["d2/kernel:0"]
        assert len(group["p"].attrs["weight_names"]) == 0
        np.testing.assert_array_equal(group["c2/c2/kernel:0"][()], model.get_layer("c2").kernel)
        np.testing.assert_array_equal(group["d1/d1/bias:0"][()], model.get_layer("d1").bias)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["w.h5"]  # no staging file left behind


def test_main_trains_digits_and_writes_weights(tmp_path, capsys):
    out = tmp_path / "digits.h5"
    assert train.main(["--dataset", "digits", "--out", str(out), "--epochs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "test accuracy (digits):" in printed
    accuracy = float(printed.split("test accuracy (digits):")[1].split()[0])
    assert 0.5 < accuracy <= 1.0  # two epochs already learn most of it
    with h5py.File(out, "r") as f:
        assert f["model_weights/dense_1/dense_1/kernel:0"].shape == (64, 10)


def test_main_rejects_missing_output_folder(tmp_path, capsys):
    out = tmp_path / "absent" / "w.h5"
    assert train.main(["--dataset", "digits", "--out", str(out)]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert not out.parent.exists()
