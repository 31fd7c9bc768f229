"""Supervised PCA: directions of the features that depend most on the labels, measured by HSIC.

With features X (n x d), centring matrix H = I - 11^T/n and a label kernel L (n x n), Supervised PCA returns the top
eigenvectors of Q = X^T H L H X (d x d): the directions that maximise the (empirical, linear-kernel)
Hilbert-Schmidt independence criterion between the projected features and the labels.

For binary labels with the delta kernel (L_ij = 1 if y_i == y_j) or a linear kernel on the labels, Q has rank one and
its only eigenvector with a nonzero eigenvalue is the normalised difference of the class means. `spca_binary`
computes that in O(n d) time and O(d) extra memory, without an n x n or d x d matrix.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

LabelKernel = Literal["delta", "linear"]


def label_kernel(labels: np.ndarray, kernel: LabelKernel = "delta") -> np.ndarray:
    """Return the n x n kernel matrix of `labels` (integers for "delta", numbers or vectors for "linear")."""
    labels = np.asarray(labels)
    if kernel == "delta":
        return (labels[:, None] == labels[None, :]).astype(np.float64)
    if kernel == "linear":
        values = labels.reshape(len(labels), -1).astype(np.float64)
        return values @ values.T
    raise ValueError(f"kernel must be 'delta' or 'linear', got {kernel!r}")


def spca(features: np.ndarray, kernel_matrix: np.ndarray, num_components: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Return the top `num_components` Supervised PCA directions (rows, unit norm) and their eigenvalues.

    This is the general form: any label kernel, any number of classes or continuous targets. It builds H L H
    implicitly by centring, but still needs the n x n kernel and a d x d matrix, so keep n and d moderate.
    """
    features = np.asarray(features, dtype=np.float64)
    count = features.shape[0]
    if kernel_matrix.shape != (count, count):
        raise ValueError(f"kernel_matrix must be {count} x {count}, got {kernel_matrix.shape}")
    centred = features - features.mean(axis=0)  # H X
    # H is symmetric, so X^T H L H X = (HX)^T L (HX).
    q_matrix = centred.T @ kernel_matrix @ centred
    values, vectors = np.linalg.eigh((q_matrix + q_matrix.T) / 2)
    order = np.argsort(values)[::-1][:num_components]
    return vectors[:, order].T, values[order]


def spca_binary(features: np.ndarray, labels: np.ndarray, chunk_rows: int = 4096) -> np.ndarray:
    """Return the leading Supervised PCA direction for 0/1 labels: the unit vector from class 1's mean to class 0's.

    Exact for the delta and the linear label kernel. Works through `features` in chunks of rows, so a memory-mapped
    array larger than memory is fine. With the project's convention (0 = safe, 1 = unsafe) the result points from
    unsafe to safe.
    """
    labels = np.asarray(labels)
    if set(np.unique(labels).tolist()) - {0, 1}:
        raise ValueError("labels must be 0 or 1")
    counts = np.array([(labels == 0).sum(), (labels == 1).sum()])
    if counts.min() == 0:
        raise ValueError(f"need samples of both classes, got {counts[0]} of class 0 and {counts[1]} of class 1")
    sums = np.zeros((2, features.shape[1]), dtype=np.float64)
    for start in range(0, features.shape[0], chunk_rows):
        block = np.asarray(features[start : start + chunk_rows], dtype=np.float64)
        block_labels = labels[start : start + chunk_rows]
        sums[0] += block[block_labels == 0].sum(axis=0)
        sums[1] += block[block_labels == 1].sum(axis=0)
    difference = sums[0] / counts[0] - sums[1] / counts[1]
    norm = np.linalg.norm(difference)
    if norm == 0.0:
        raise ValueError("the two class means are identical, so no direction separates them")
    return difference / norm
