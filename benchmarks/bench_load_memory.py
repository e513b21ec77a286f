"""Peak memory of loading VGG16 from HDF5, and of one explanation.

    python benchmarks/bench_load_memory.py [--dtype float32] [--batch 1] [--method rlrp]

Writes a Keras-application-layout VGG16 file of He-normal weights into a
temporary directory (streamed in blocks, so writing it does not raise this
process's peak), then measures peak RSS (``VmHWM``, reset through
``/proc/self/clear_refs`` where Linux allows it) after
``rlrp_ref.models.build("vgg16", weights=path)`` (the structure holds
zero-memory placeholders until the arrays arrive), after reloading the file
into the loaded model (old and new weights coexist until the swap), and after one
``rlrp_ref.explain.explain`` call. The target for float32, batch 1 is 1.3 GB
after the explanation; loading should hold at most one extra copy of the
weights at its peak. Prints figures only; nothing is asserted.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import tempfile
import time

import h5py
import numpy as np

from rlrp_ref import models, runtime

from memory import peak_mb, reset_peak, rss_mb  # benchmarks/memory.py

MB = 1024 * 1024


def write_vgg16(path, dtype, seed: int = 0, block_elements: int = 8 * MB) -> int:
    """Write He-normal VGG16 weights in the Keras application layout, one block of rows at a time; return bytes."""
    rng = np.random.default_rng(seed)
    model = models.shape_model("vgg16")
    total = 0
    with h5py.File(path, "w") as f:
        names = []
        for layer in model.iter_layers():
            names.append(layer.name)
            group = f.create_group(layer.name)
            weight_names = [f"{layer.name}/{p}:0" for p in layer.params]
            group.attrs["weight_names"] = np.array(weight_names, dtype="S")
            for wn, (p, shape) in zip(weight_names, layer.param_shapes().items()):
                ds = group.create_dataset(wn, shape=shape, dtype=dtype)
                total += ds.size * ds.dtype.itemsize
                if p != "kernel":
                    ds[...] = 0
                    continue
                std = math.sqrt(2.0 / math.prod(shape[:-1]))
                rows = max(1, block_elements // math.prod(shape[1:]))
                for start in range(0, shape[0], rows):
                    stop = min(start + rows, shape[0])
                    block = rng.standard_normal((stop - start,) + shape[1:], dtype=np.float32)
                    block *= std
                    ds[start:stop] = block
        f.attrs["layer_names"] = np.array(names, dtype="S")
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--method", default="rlrp")
    args = parser.parse_args(argv)
    runtime.tune()  # glibc keeps freed memory, as in the CLI (rlrp_ref/runtime.py)

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "vgg16_weights.h5")
        t0 = time.perf_counter()
        file_bytes = write_vgg16(path, args.dtype)
        print(f"wrote {path}: {file_bytes / MB:.0f} MB of {args.dtype} weights in {time.perf_counter() - t0:.1f} s")
        gc.collect()
        exact_peak = reset_peak()
        base = rss_mb()
        print(f"baseline RSS (numpy, h5py, rlrp_ref imported): {base:.0f} MB"
              + ("" if exact_peak else " (peak counter could not be reset: peaks include the file writing)"))

        t0 = time.perf_counter()
        model = models.build("vgg16", weights=path, dtype=args.dtype)
        load_s = time.perf_counter() - t0
        weights_mb = sum(v.nbytes for layer in model.iter_layers() for v in layer.params.values()) / MB
        after_load_peak, after_load_rss = peak_mb(), rss_mb()
        print(f"load: {load_s:.1f} s; weights {weights_mb:.0f} MB; RSS after load {after_load_rss:.0f} MB; "
              f"peak RSS during load {after_load_peak:.0f} MB")
        print(f"  peak above baseline: {after_load_peak - base:.0f} MB = {(after_load_peak - base) / weights_mb:.2f} x the weights "
              f"(target: at most 2 x, the model plus one extra copy)")

        import weights_import

        gc.collect()
        reset_peak()
        before = rss_mb()
        t0 = time.perf_counter()
        weights_import.load(path, model)  # into a model that already holds weights: old + new coexist
        print(f"reload into the loaded model: {time.perf_counter() - t0:.1f} s; peak RSS {peak_mb():.0f} MB, "
              f"{(peak_mb() - before) / weights_mb:.2f} x the weights above the RSS before ({before:.0f} MB)"
              + ("" if exact_peak else " (peak not resettable here: figure is an upper bound)"))
        gc.collect()

    try:
        from rlrp_ref.explain import explain
    except ImportError:
        print("rlrp_ref.explain not available: no explanation measured")
        return
    x = np.random.default_rng(1).standard_normal((args.batch, 224, 224, 3)).astype(args.dtype) * 50
    gc.collect()
    reset_peak()  # the reload above doubled the weights for a moment; measure load + explanation as a user runs them
    t0 = time.perf_counter()
    explanation = explain(model, x, method=args.method)
    explain_s = time.perf_counter() - t0
    relevance = getattr(explanation, "relevance", None)
    shape = getattr(relevance, "shape", None)
    final_peak = peak_mb()
    print(f"explain(method={args.method!r}, batch {args.batch}): {explain_s:.1f} s, input relevance shape {shape}; "
          f"peak RSS {final_peak:.0f} MB ({final_peak / 1024:.2f} GB, model loaded and explained; target 1.3 GB for float32 batch 1)")


if __name__ == "__main__":
    main()
