"""Whether a batch of samples fits in memory: an estimate of a call's peak activation memory (a proxy, not a
measurement) against the memory the process can get, checked before a batched call starts.

A batch that does not fit is refused with the largest batch that the estimate says fits; nothing is retried
at a smaller size, because a sample's output depends on the batch it is generated in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hgc_tune.errors import OutOfMemoryError

if TYPE_CHECKING:
    from hgc_tune._typing import ControlNetPipeline
    from hgc_tune.generation._inputs import GenerationSettings

__all__ = ["available_bytes", "check_batch_fits", "largest_fitting_batch", "sample_activation_bytes"]

# Proxy constants, chosen on the conservative side. Live feature maps at the highest resolution while the
# U-Net (with its ControlNet) runs one step (the skip connections kept for the up path, the block's own
# temporaries), and while the VAE decodes one image at the output resolution.
_DENOISER_LIVE_MAPS = 32
_DECODER_LIVE_MAPS = 8
# The share of the available memory a batch may plan to use (the rest: allocator slack, the caller's arrays).
_USABLE_SHARE = 0.8


def sample_activation_bytes(pipe: ControlNetPipeline, settings: GenerationSettings) -> int:
    """About how many bytes of activations one sample adds to a call's peak (a proxy).

    Counts, at the highest resolution, the denoiser's live feature maps (doubled under classifier-free
    guidance, which runs the uncond and the cond half), its top-level self-attention score matrix as if
    materialised, and the VAE decoder's live maps at the image size.
    """
    unet = pipe.unet
    element = unet.dtype.itemsize
    scale = getattr(pipe, "vae_scale_factor", 8)
    h, w = settings.height // scale, settings.width // scale
    config: Any = unet.config  # a FrozenDict with attribute access
    channels = int(config.block_out_channels[0])
    heads = config.attention_head_dim
    heads = int(heads[0] if isinstance(heads, list | tuple) else heads)
    halves = 2 if settings.guidance_scale > 1.0 else 1
    denoiser = _DENOISER_LIVE_MAPS * channels * h * w * element + heads * (h * w) ** 2 * 4
    vae_config: Any = pipe.vae.config
    decoder_channels = int(vae_config.block_out_channels[0])  # the decoder's width at the image size
    decoder = _DECODER_LIVE_MAPS * decoder_channels * settings.height * settings.width * element
    return halves * denoiser + decoder


def available_bytes(pipe: ControlNetPipeline) -> int | None:
    """The memory the pipeline's device can still give: a GPU's free memory, or the host's ``MemAvailable``
    (Linux); ``None`` when it cannot be read."""
    import torch

    device = pipe.device
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def largest_fitting_batch(per_sample: int, available: int) -> int:
    """The largest batch whose estimated activations fit in the usable share of ``available`` (at least 1)."""
    return max(1, int(available * _USABLE_SHARE) // max(per_sample, 1))


def check_batch_fits(pipe: ControlNetPipeline, settings: GenerationSettings) -> None:
    """Refuse ``settings.samples_per_call`` when its estimated activations do not fit.

    Raises:
        OutOfMemoryError: The estimate for the batch exceeds the usable memory; the message names the
            largest batch size that fits by the same estimate.
    """
    size = settings.samples_per_call
    if size <= 1:  # one sample per call is what every run did before batching: nothing to refuse
        return
    available = available_bytes(pipe)
    if available is None:
        return
    per_sample = sample_activation_bytes(pipe, settings)
    fits = largest_fitting_batch(per_sample, available)
    if size > fits:
        raise OutOfMemoryError(
            f"samples_per_call={size} does not fit: about {size * per_sample / 2**20:.0f} MiB of activations "
            f"(an estimate at {settings.height}x{settings.width}) against {available / 2**20:.0f} MiB "
            f"available on {pipe.device}; use samples_per_call={fits} or fewer."
        )
