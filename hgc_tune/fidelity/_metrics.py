"""Pure metric functions on numpy arrays.

Library implementations are used where they exist (scikit-image's SSIM and PSNR); what no library
provides in the needed form (mIoU over the classes of one pair of maps, edge F1 with a pixel tolerance,
RMSE, latent relative error) is written here. Every function takes arrays (or anything ``np.asarray``
accepts, including PIL images and CPU torch tensors) and returns a Python ``float``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from scipy.ndimage import distance_transform_edt
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from hgc_tune.errors import FidelityError

if TYPE_CHECKING:
    from hgc_tune._typing import ArrayInput

__all__ = [
    "PSNR_CAP_DB",
    "as_array",
    "as_float_image",
    "as_uint8_image",
    "edge_f1",
    "latent_rel_error",
    "miou",
    "psnr",
    "rmse",
    "ssim",
]

PSNR_CAP_DB = 60.0
"""PSNR values are capped here (dB); identical images score exactly this instead of ``inf``.

60 dB is a mean squared error of 1e-6 of the data range, below the quantisation step of 8-bit images
(1/255 ≈ 0.0039, i.e. ≈ 48 dB for a one-level error everywhere), so the cap never hides a visible
difference while keeping means and relative losses finite.
"""


def as_array(x: ArrayInput) -> np.ndarray:
    """Convert an array-like (numpy array, PIL image, torch tensor on any device) to a numpy array."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):
        # torch tensors: bf16/fp16 have no (or a lossy) numpy counterpart, so widen before converting
        x = x.detach().cpu()
        if x.is_floating_point():
            x = x.double()
        return x.numpy()
    return np.asarray(x)


def as_uint8_image(image: ArrayInput, *, name: str = "image") -> np.ndarray:
    """An ``H×W×3`` uint8 RGB image from a uint8 or ``[0, 1]`` float image (``H×W``, ``H×W×1/3/4``).

    Gray images are repeated to three channels and an alpha channel is dropped. Float images are scaled
    by 255 and rounded, as diffusers' ``numpy_to_pil`` does.

    Raises:
        FidelityError: the array is not an image of that shape, or a float image leaves ``[0, 1]``.
    """
    a = as_array(image)
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.ndim != 3 or a.shape[-1] not in (3, 4):
        raise FidelityError(f"`{name}` must be an H×W×3 (or H×W) image, but got shape {tuple(a.shape)}.")
    a = a[..., :3]
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * 255
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)) or a.min() < 0.0 or a.max() > 1.0:
            raise FidelityError(
                f"a float `{name}` must have values in [0, 1], but got the range "
                f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]."
            )
        return np.round(a * 255.0).astype(np.uint8)
    raise FidelityError(f"`{name}` must be uint8 or float in [0, 1], but got dtype {a.dtype}.")


def as_float_image(image: ArrayInput, *, name: str = "image") -> np.ndarray:
    """A float64 image in ``[0, 1]``: uint8 is divided by 255, bool becomes 0/1, float is checked.

    The shape is kept (``H×W`` or ``H×W×C``).

    Raises:
        FidelityError: an unsupported dtype, or a float image outside ``[0, 1]`` or not finite.
    """
    a = as_array(image)
    if a.dtype == np.uint8:
        return a.astype(np.float64) / 255.0
    if a.dtype == np.bool_:
        return a.astype(np.float64)
    if np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
        if not np.all(np.isfinite(a)) or (a.size and (a.min() < 0.0 or a.max() > 1.0)):
            raise FidelityError(
                f"a float `{name}` must have finite values in [0, 1], but got the range "
                f"[{np.nanmin(a):.4g}, {np.nanmax(a):.4g}]."
            )
        return a
    raise FidelityError(f"`{name}` must be uint8, bool or float in [0, 1], but got dtype {a.dtype}.")


def _check_same_shape(a: np.ndarray, b: np.ndarray, names: tuple[str, str]) -> None:
    if a.shape != b.shape:
        raise FidelityError(
            f"`{names[0]}` and `{names[1]}` must have the same shape, but got "
            f"{names[0]}.shape={tuple(a.shape)} and {names[1]}.shape={tuple(b.shape)}."
        )
    if a.size == 0:
        raise FidelityError(f"`{names[0]}` and `{names[1]}` are empty (shape {tuple(a.shape)}).")


def _as_label_map(x: ArrayInput, name: str) -> np.ndarray:
    a = as_array(x)
    if a.ndim != 2:
        raise FidelityError(f"`{name}` must be an H×W class map, but got shape {tuple(a.shape)}.")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise FidelityError(f"`{name}` must hold integer class ids, but got dtype {a.dtype}.")
    return a.astype(np.int64)


def _as_edge_map(x: ArrayInput, name: str) -> np.ndarray:
    a = as_array(x)
    if a.ndim != 2:
        raise FidelityError(f"`{name}` must be an H×W edge map, but got shape {tuple(a.shape)}.")
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        # a float map needs a threshold, and which one is the caller's decision, not ours
        raise FidelityError(
            f"`{name}` must be a bool (or 0/nonzero integer) edge map, but got dtype {a.dtype}."
        )
    return a != 0


def miou(pred: ArrayInput, target: ArrayInput, *, ignore_index: int | None = None) -> float:
    """Mean intersection-over-union of two class maps.

    Convention: the mean runs over the classes present in the prediction or the target (after removing
    ``ignore_index`` pixels of the target); a class absent from both is ignored rather than counted as
    IoU 1 or 0. A class that appears in only one of the maps has IoU 0. This is the per-image mIoU;
    datasets' mIoU in mmsegmentation-style evaluation accumulates intersections and unions over all
    images first, which weighs large regions more.

    Args:
        pred: ``H×W`` integer class map of the prediction.
        target: ``H×W`` integer class map of the target.
        ignore_index: a target class id whose pixels are left out of both maps (e.g. 255 for "unlabelled").

    Returns:
        The mean IoU in ``[0, 1]``; 1 for identical maps.

    Raises:
        FidelityError: maps that are not 2-D integer arrays of one shape, or no pixel left to score.

    Example:
        >>> import numpy as np
        >>> miou(np.array([[0, 1], [1, 1]]), np.array([[0, 1], [1, 0]]))
        0.5833333333333333
    """
    p = _as_label_map(pred, "pred")
    t = _as_label_map(target, "target")
    _check_same_shape(p, t, ("pred", "target"))
    p, t = p.ravel(), t.ravel()
    if ignore_index is not None:
        keep = t != ignore_index
        p, t = p[keep], t[keep]
        if t.size == 0:
            raise FidelityError(f"every target pixel equals ignore_index={ignore_index}; nothing to score.")
    classes, inverse = np.unique(np.concatenate([p, t]), return_inverse=True)
    k, n = classes.size, p.size
    p_idx, t_idx = inverse[:n], inverse[n:]
    area_p = np.bincount(p_idx, minlength=k)
    area_t = np.bincount(t_idx, minlength=k)
    inter = np.bincount(p_idx[p_idx == t_idx], minlength=k)
    union = area_p + area_t - inter  # > 0 for every class in `classes`
    return float(np.mean(inter / union))


def edge_f1(pred: ArrayInput, target: ArrayInput, *, tolerance: float = 1.0) -> float:
    """F1 score of two binary edge maps, with a pixel tolerance.

    A predicted edge pixel is a true positive for precision if a target edge pixel lies within
    Euclidean distance ``tolerance`` of it; a target edge pixel counts as recalled if a predicted edge
    pixel lies within ``tolerance`` (the usual dilation-based edge F1; ``tolerance=0`` is the exact
    pixel-wise F1). Two empty maps agree perfectly (F1 1); one empty map against a non-empty one scores 0.

    Args:
        pred: ``H×W`` bool (or 0/nonzero integer) edge map of the prediction.
        target: ``H×W`` edge map of the target.
        tolerance: the matching radius in pixels, ``>= 0``.

    Returns:
        ``2PR / (P + R)`` in ``[0, 1]``.

    Raises:
        FidelityError: maps that are not 2-D bool/integer arrays of one shape, or a negative tolerance.
    """
    if not np.isfinite(tolerance) or tolerance < 0:
        raise FidelityError(f"`tolerance` must be a finite number >= 0, but got tolerance={tolerance}.")
    p = _as_edge_map(pred, "pred")
    t = _as_edge_map(target, "target")
    _check_same_shape(p, t, ("pred", "target"))
    n_p, n_t = int(p.sum()), int(t.sum())
    if n_p == 0 and n_t == 0:
        return 1.0
    if n_p == 0 or n_t == 0:
        return 0.0
    near_t = distance_transform_edt(~t) <= tolerance
    near_p = distance_transform_edt(~p) <= tolerance
    precision = float((p & near_t).sum()) / n_p
    recall = float((t & near_p).sum()) / n_t
    if precision + recall == 0.0:
        return 0.0
    return 2.0 * precision * recall / (precision + recall)


def ssim(image: ArrayInput, reference: ArrayInput) -> float:
    """Structural similarity of two images (scikit-image's ``structural_similarity``).

    Both inputs are brought to float ``[0, 1]`` (uint8 / 255) and compared with ``data_range=1`` and
    scikit-image's defaults (7×7 uniform window, sample covariance); ``H×W×C`` images are compared per
    channel and averaged. Works for gray ``H×W`` maps (soft edges) and RGB images alike.

    Returns:
        SSIM in ``[-1, 1]``; 1 for identical images.

    Raises:
        FidelityError: shapes differ, values leave ``[0, 1]``, or the image is smaller than the 7×7 window.
    """
    a = as_float_image(image, name="image")
    b = as_float_image(reference, name="reference")
    _check_same_shape(a, b, ("image", "reference"))
    if a.ndim not in (2, 3):
        raise FidelityError(f"`image` must be H×W or H×W×C, but got shape {tuple(a.shape)}.")
    if min(a.shape[:2]) < 7:
        raise FidelityError(f"SSIM needs images of at least 7×7 pixels, but got shape {tuple(a.shape)}.")
    channel_axis = -1 if a.ndim == 3 else None
    return float(structural_similarity(a, b, data_range=1.0, channel_axis=channel_axis))


def psnr(image: ArrayInput, reference: ArrayInput, *, cap: float = PSNR_CAP_DB) -> float:
    """Peak signal-to-noise ratio in dB (scikit-image's ``peak_signal_noise_ratio``), capped at ``cap``.

    Inputs are brought to float ``[0, 1]`` (uint8 / 255) and compared with ``data_range=1``, so a uint8
    and a float rendering of the same image score alike. Identical images score ``cap`` (not ``inf``);
    see :data:`PSNR_CAP_DB` for why the default cap is 60 dB.

    Returns:
        ``min(10·log10(1 / MSE), cap)``, in ``[0, cap]``.

    Raises:
        FidelityError: shapes differ, values leave ``[0, 1]``, or ``cap`` is not a positive finite number.
    """
    if not np.isfinite(cap) or cap <= 0:
        raise FidelityError(f"`cap` must be a positive finite number of dB, but got cap={cap}.")
    a = as_float_image(image, name="image")
    b = as_float_image(reference, name="reference")
    _check_same_shape(a, b, ("image", "reference"))
    if np.array_equal(a, b):
        return float(cap)
    return float(min(peak_signal_noise_ratio(b, a, data_range=1.0), cap))


def rmse(pred: ArrayInput, target: ArrayInput) -> float:
    """Root mean squared error ``sqrt(mean((pred - target)²))`` of two arrays of one shape.

    Used on depth maps (``depth_rmse``) in the units the caller gives; the task evaluator compares
    depths scaled to ``[0, 1]``.

    Raises:
        FidelityError: shapes differ or a value is not finite.
    """
    a = as_array(pred).astype(np.float64)
    b = as_array(target).astype(np.float64)
    _check_same_shape(a, b, ("pred", "target"))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FidelityError("`pred` and `target` must be finite for RMSE, but one holds inf or nan.")
    return float(np.sqrt(np.mean((a - b) ** 2)))


def latent_rel_error(latent: ArrayInput, reference: ArrayInput) -> float:
    """Relative L2 error ``||latent − reference|| / ||reference||`` (Frobenius norm over all elements).

    Raises:
        FidelityError: shapes differ, a value is not finite, or the reference is all zeros.
    """
    a = as_array(latent).astype(np.float64)
    b = as_array(reference).astype(np.float64)
    _check_same_shape(a, b, ("latent", "reference"))
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise FidelityError("`latent` and `reference` must be finite, but one holds inf or nan.")
    norm = float(np.linalg.norm(b.ravel()))
    if norm == 0.0:
        raise FidelityError("the relative error needs a nonzero reference, but ||reference|| = 0.")
    return float(np.linalg.norm((a - b).ravel()) / norm)
