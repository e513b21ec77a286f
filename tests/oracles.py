"""Naive loop implementations used as test oracles. Plain and slow on purpose."""

import numpy as np


def same_pads(n, k, s):
    out = -(-n // s)
    total = max((out - 1) * s + k - n, 0)
    return total // 2, total - total // 2


def explicit_pads(padding, h, w, kh, kw, sh, sw):
    if padding == "valid":
        return (0, 0), (0, 0)
    if padding == "same":
        return same_pads(h, kh, sh), same_pads(w, kw, sw)
    return tuple(padding[0]), tuple(padding[1])


def conv2d(x, kernel, bias, strides, padding):
    n, h, w, c = x.shape
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    (t, b), (l, r) = explicit_pads(padding, h, w, kh, kw, sh, sw)
    xp = np.zeros((n, h + t + b, w + l + r, c), dtype=np.float64)
    xp[:, t : t + h, l : l + w, :] = x
    ho = (h + t + b - kh) // sh + 1
    wo = (w + l + r - kw) // sw + 1
    y = np.zeros((n, ho, wo, cout))
    for ni in range(n):
        for p in range(ho):
            for q in range(wo):
                for o in range(cout):
                    acc = 0.0
                    for i in range(kh):
                        for j in range(kw):
                            for ci in range(c):
                                acc += xp[ni, p * sh + i, q * sw + j, ci] * kernel[i, j, ci, o]
                    y[ni, p, q, o] = acc + (bias[o] if bias is not None else 0.0)
    return y


def conv2d_vjp(x, kernel, grad, strides, padding):
    """Input gradient by the chain rule, one scalar at a time."""
    n, h, w, c = x.shape
    kh, kw, cin, cout = kernel.shape
    sh, sw = strides
    (t, b), (l, r) = explicit_pads(padding, h, w, kh, kw, sh, sw)
    dxp = np.zeros((n, h + t + b, w + l + r, c))
    _, ho, wo, _ = grad.shape
    for ni in range(n):
        for p in range(ho):
            for q in range(wo):
                for o in range(cout):
                    for i in range(kh):
                        for j in range(kw):
                            for ci in range(c):
                                dxp[ni, p * sh + i, q * sw + j, ci] += grad[ni, p, q, o] * kernel[i, j, ci, o]
    return dxp[:, t : t + h, l : l + w, :]


def pool(x, pool_size, strides, padding, mode):
    """Max or average pooling; returns (y, winners) where winners[n,p,q,c] = (row, col) in x."""
    n, h, w, c = x.shape
    kh, kw = pool_size
    sh, sw = strides
    (t, b), (l, r) = explicit_pads(padding, h, w, kh, kw, sh, sw)
    ho = (h + t + b - kh) // sh + 1
    wo = (w + l + r - kw) // sw + 1
    y = np.zeros((n, ho, wo, c))
    winners = {}
    for ni in range(n):
        for p in range(ho):
            for q in range(wo):
                for ci in range(c):
                    best, best_pos, total, count = -np.inf, None, 0.0, 0
                    for i in range(kh):
                        for j in range(kw):
                            r_, c_ = p * sh + i - t, q * sw + j - l
                            if 0 <= r_ < h and 0 <= c_ < w:
                                v = x[ni, r_, c_, ci]
                                total += v
                                count += 1
                                if best_pos is None or v > best:  # strict: ties keep the first in row-major order
                                    best, best_pos = v, (r_, c_)
                    if mode == "max":
                        y[ni, p, q, ci] = best
                        winners[(ni, p, q, ci)] = best_pos
                    else:
                        y[ni, p, q, ci] = total / count
                        winners[(ni, p, q, ci)] = count
    return y, winners


def pool_vjp(x, grad, pool_size, strides, padding, mode):
    n, h, w, c = x.shape
    kh, kw = pool_size
    sh, sw = strides
    (t, b), (l, r) = explicit_pads(padding, h, w, kh, kw, sh, sw)
    _, winners = pool(x, pool_size, strides, padding, mode)
    dx = np.zeros(x.shape)
    _, ho, wo, _ = grad.shape
    for ni in range(n):
        for p in range(ho):
            for q in range(wo):
                for ci in range(c):
                    g = grad[ni, p, q, ci]
                    if mode == "max":
                        r_, c_ = winners[(ni, p, q, ci)]
                        dx[ni, r_, c_, ci] += g
                    else:
                        count = winners[(ni, p, q, ci)]
                        for i in range(kh):
                            for j in range(kw):
                                r_, c_ = p * sh + i - t, q * sw + j - l
                                if 0 <= r_ < h and 0 <= c_ < w:
                                    dx[ni, r_, c_, ci] += g / count
    return dx


def dense(x, kernel, bias):
    n, fin = x.shape
    fout = kernel.shape[1]
    y = np.zeros((n, fout))
    for ni in range(n):
        for o in range(fout):
            y[ni, o] = sum(x[ni, i] * kernel[i, o] for i in range(fin)) + (bias[o] if bias is not None else 0.0)
    return y


def numerical_vjp(f, x, grad, eps=1e-6):
    """sum(grad * f(x)) differentiated by central differences, one input at a time."""
    x = np.array(x, dtype=np.float64)
    out = np.zeros_like(x)
    flat = x.reshape(-1)
    for k in range(flat.size):
        old = flat[k]
        flat[k] = old + eps
        plus = np.sum(grad * f(x))
        flat[k] = old - eps
        minus = np.sum(grad * f(x))
        flat[k] = old
        out.reshape(-1)[k] = (plus - minus) / (2 * eps)
    return out
