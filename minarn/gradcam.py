"""Grad-CAM on ARN-CNN's last convolution (conv2d_22), with minarn's own backward pass (paper Fig. 9).

Recipe (Selvaraju et al. 2017, as on keras.io; ``docs/training-spec.md`` section 3), for an image x and a class c:

1. inference-mode forward (dropout off, batch norm on moving statistics) up to conv2d_22:
   A = conv2d_22(...)(x), the post-ReLU map, shape (h, w, K) = (5, 5, 125) for 64x64 inputs;
2. the class score is the pre-softmax logit y_c (dense_1 before its softmax: with a saturated softmax,
   p ~ 1, the gradient of the probability vanishes, the logit's does not);
3. g = dy_c / dA by ``ARNCNN.backward_head`` with a one-hot upstream gradient (no autograd);
4. channel weights alpha_k = mean over the h*w positions of g[..., k] (global average pooling);
5. cam = ReLU(sum_k alpha_k A[..., k]), divided by its maximum; an all-zero map (no position votes for c)
   stays all zeros instead of 0/0;
6. upsampled bilinearly to the image size and overlaid on the image with the jet colour map at alpha 0.4.

Side effect: ``backward_head`` overwrites the ``grads`` of dense and dense_1 (harmless outside training).

References: R. R. Selvaraju et al., "Grad-CAM: Visual Explanations from Deep Networks via Gradient-based
Localization", ICCV 2017; F. Chollet, "Grad-CAM class activation visualization", keras.io examples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from minarn.losses import softmax
from minarn.model import ARNCNN

__all__ = ["GradCAM", "cam_from_maps", "class_score_gradient", "gradcam", "head_logits", "overlay",
           "score_gradient_from_features", "upsample"]


def head_logits(model: ARNCNN, features: np.ndarray) -> np.ndarray:
    """The dense head in inference mode, from conv2d_22's map to the pre-softmax scores.

    Shapes: features A (N, h, w, 125) -> logits (N, K).
    Math: logits = dense_1(dropout_eval(dense(flatten(A)))) without dense_1's softmax; dropout is the identity.
    Leaves the head layers' caches set, so ``model.backward_head`` can follow.
    """
    h = model.flatten.forward(features, False)
    h = model.dropout.forward(model.dense.forward(h, False), False)
    return model.classifier.forward_linear(h, False)


def class_score_gradient(
    model: ARNCNN, x: np.ndarray, class_index: int | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Feature map A of conv2d_22, the gradient of the chosen class's logit with respect to A, the logits
    and the chosen classes, for a batch of images (inference mode).

    Parameters
    ----------
    model : ARNCNN (any variant: conv2d_22 is always there).
    x : images (N, H, W, C), float in [0, 1] or uint8 (scaled as in training).
    class_index : None (each image's top-scoring class), one int for all images, or (N,) ints.

    Returns
    -------
    A (N, h, w, F), dA = d logit[n, c_n] / d A[n] (N, h, w, F), logits (N, K), classes (N,) int64.
    """
    A = model.features(model._prepare(x), training=False)
    dA, logits, classes = score_gradient_from_features(model, A, class_index)
    return A, dA, logits, classes


def score_gradient_from_features(
    model: ARNCNN, features: np.ndarray, class_index: int | np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The head part of :func:`class_score_gradient`: from conv2d_22's map A to (dA, logits, classes).

    Shapes: features A (N, h, w, F) -> dA (N, h, w, F), logits (N, K), classes (N,) int64.
    Math: one batch backward of sum_n logit[n, c_n] from a one-hot upstream gradient; in inference mode
    image n's logits depend on A[n] only, so row n of dA is image n's own gradient.
    """
    logits = head_logits(model, features)
    n, k = logits.shape
    if class_index is None:
        classes = logits.argmax(axis=1)
    else:
        classes = np.broadcast_to(np.asarray(class_index, dtype=np.int64), (n,)).copy()
        if classes.size and (classes.min() < 0 or classes.max() >= k):
            raise ValueError(f"gradcam: class_index must be in [0, {k}), got {class_index!r}")
    onehot = np.zeros_like(logits)
    onehot[np.arange(n), classes] = 1
    dA = model.backward_head(onehot)
    return dA, logits, classes.astype(np.int64)


def cam_from_maps(features: np.ndarray, grads: np.ndarray) -> np.ndarray:
    """Grad-CAM maps from a feature map and the class score's gradient with respect to it.

    Shapes: features A, grads dA: (N, h, w, F) -> cam (N, h, w) in [0, 1].
    Math: alpha[n, k] = mean_{i,j} dA[n, i, j, k]; cam = ReLU(sum_k alpha[n, k] A[n, :, :, k]);
        cam /= max(cam) when max(cam) > 0, else cam stays all zeros (nothing votes for the class).
    """
    A = np.asarray(features, dtype=np.float64)
    dA = np.asarray(grads, dtype=np.float64)
    if A.shape != dA.shape or A.ndim != 4:
        raise ValueError(f"cam_from_maps: expected features and grads of one shape (N, h, w, F), "
                         f"got {A.shape}, {dA.shape}")
    alpha = dA.mean(axis=(1, 2))  # (N, F)
    cam = np.maximum(np.einsum("nijk,nk->nij", A, alpha), 0.0)
    top = cam.max(axis=(1, 2), keepdims=True)
    return np.divide(cam, top, out=np.zeros_like(cam), where=top > 0)


def upsample(cam: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of one map to ``size`` = (height, width), values kept in the input's range.

    Shapes: cam (h, w) -> (height, width) float32. Uses Pillow's BILINEAR on a 32-bit float image: pixel
    centres aligned (``align_corners=False``), edge values repeated, so each output pixel is a convex
    combination of input pixels and a [0, 1] map stays in [0, 1]. A 5x5 map gives a necessarily coarse result.
    """
    cam = np.asarray(cam, dtype=np.float32)
    if cam.ndim != 2:
        raise ValueError(f"upsample: expected a 2-D map (h, w), got shape {cam.shape}")
    out = Image.fromarray(np.ascontiguousarray(cam)).resize((int(size[1]), int(size[0])), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(out, dtype=np.float32), cam.min(), cam.max())


def overlay(image: np.ndarray, heatmap: np.ndarray, alpha: float = 0.4, cmap: str = "jet") -> np.ndarray:
    """Blend a [0, 1] heat map, coloured with ``cmap``, over a grayscale (or RGB) image.

    Shapes: image (H, W), (H, W, 1) or (H, W, 3), uint8 or float in [0, 1]; heatmap (H, W) in [0, 1] -> RGB
    (H, W, 3) float in [0, 1]. Math: out = alpha * cmap(heatmap) + (1 - alpha) * image, gray repeated on R, G, B
    (keras.io adds 0.4 * heat to the image and rescales; a plain alpha blend keeps the image's brightness).
    """
    from matplotlib import colormaps  # lazy: `import minarn` stays light

    img = np.asarray(image)
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    img = img.astype(np.float64) / 255.0 if img.dtype == np.uint8 else img.astype(np.float64)
    rgb = img.ndim == 3 and img.shape[-1] == 3
    if img.shape[:2] != np.shape(heatmap) or (img.ndim == 3 and not rgb):
        raise ValueError(f"overlay: image {img.shape} and heatmap {np.shape(heatmap)} must have the same (H, W)")
    colour = colormaps[cmap](np.clip(heatmap, 0.0, 1.0))[..., :3]
    return np.clip(alpha * colour + (1.0 - alpha) * (img if rgb else img[..., None]), 0.0, 1.0)


@dataclass(frozen=True)
class GradCAM:
    """Result of :func:`gradcam` for N images.

    ``cam`` (N, h, w) in [0, 1] on conv2d_22's grid; ``heatmap`` (N, H, W) the same upsampled to the image
    size; ``classes`` (N,) the explained class; ``probs`` (N, K) softmax of ``logits`` (N, K);
    ``features``/``grads`` (N, h, w, F) the map A and dy_c/dA; ``weights`` (N, F) the channel weights alpha.
    """

    cam: np.ndarray
    heatmap: np.ndarray
    classes: np.ndarray
    logits: np.ndarray
    probs: np.ndarray
    features: np.ndarray
    grads: np.ndarray
    weights: np.ndarray

    def overlays(self, images: np.ndarray, alpha: float = 0.4) -> np.ndarray:
        """RGB overlays (N, H, W, 3) in [0, 1] of ``heatmap`` on ``images`` (N, H, W[, 1])."""
        return np.stack([overlay(img, hm, alpha) for img, hm in zip(images, self.heatmap)])


def gradcam(model: ARNCNN, images: np.ndarray, class_index: int | np.ndarray | None = None,
            batch_size: int = 64) -> GradCAM:
    """Grad-CAM of conv2d_22 for a batch of images (see the module docstring for the recipe).

    Parameters
    ----------
    model : a trained ARNCNN.
    images : (N, H, W, 1) or (N, H, W), uint8 or float in [0, 1] (as ``ARNCNN.predict`` takes them).
    class_index : None explains each image's predicted class; an int or (N,) ints pick the class.
    batch_size : images per forward/backward pass.
    """
    x = np.asarray(images)
    if x.ndim == 3:
        x = x[..., None]
    parts: list[tuple[Any, ...]] = []
    for start in range(0, len(x), batch_size):
        ci = class_index
        if class_index is not None and np.ndim(class_index) > 0:
            ci = np.asarray(class_index)[start : start + batch_size]
        parts.append(class_score_gradient(model, x[start : start + batch_size], ci))
    if not parts:
        raise ValueError("gradcam: no images given")
    A, dA, logits, classes = (np.concatenate(p) for p in zip(*parts))
    cam = cam_from_maps(A, dA)
    H, W = x.shape[1:3]
    heatmap = np.stack([upsample(c, (H, W)) for c in cam])
    probs = softmax(logits)
    return GradCAM(cam, heatmap, classes, logits, probs, A, dA, dA.astype(np.float64).mean(axis=(1, 2)))
