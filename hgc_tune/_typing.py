"""Types the package annotates with and the type checker reads; nothing here runs at import time.

:data:`ArrayInput` is what the metric functions take: anything ``np.asarray`` accepts, a PIL image or a torch
tensor on any device.

:class:`ControlNetPipeline` is what hgc-tune needs of a diffusers pipeline. It is a ``Protocol`` rather than
diffusers' ``DiffusionPipeline``, so that a signature says which parts are used, and a pipeline built another
way (a test's stand-in) fits as long as it has them. diffusers' own pipelines fit it: the type checker
verifies that below (``_diffusers_pipelines_fit``).

The heavy modules are imported for the type checker only (``TYPE_CHECKING``), so importing this module
imports neither torch nor diffusers, and it imports nothing from the package (no edge in the import graph).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

if TYPE_CHECKING:
    # diffusers' defining modules, not `from diffusers import …`: the type checker resolves the package's
    # lazy names to its placeholder classes (`utils/dummy_*_objects.py`), which have none of the members.
    import torch
    from diffusers.configuration_utils import ConfigMixin
    from diffusers.models.autoencoders.autoencoder_kl import AutoencoderKL
    from diffusers.models.controlnets.controlnet import ControlNetModel
    from diffusers.models.controlnets.multicontrolnet import MultiControlNetModel
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel
    from numpy.typing import ArrayLike
    from PIL.Image import Image
    from typing_extensions import Self

    # For the type checker only (no runtime name): import it under TYPE_CHECKING.
    ArrayInput: TypeAlias = ArrayLike | Image | torch.Tensor

__all__ = ["ControlNetPipeline"]


class ControlNetPipeline(Protocol):
    """A diffusers Stable Diffusion (1.5 or XL) + ControlNet pipeline: text-to-image, img2img or inpainting.

    These are the members the package reads or sets. Other components (``text_encoder``, ``text_encoder_2``,
    ``tokenizer``) are optional and read with ``getattr(pipe, name, None)``.
    """

    unet: UNet2DConditionModel
    # One ControlNetModel, or several in a MultiControlNetModel.
    controlnet: ControlNetModel | MultiControlNetModel
    # Any diffusers scheduler (each is a ConfigMixin; SchedulerMixin has no `config`). Settable: the
    # profile's scheduler is put back in place before a run.
    scheduler: ConfigMixin
    vae: AutoencoderKL
    vae_scale_factor: int

    @property
    def components(self) -> dict[str, Any]: ...

    @property
    def config(self) -> Mapping[str, Any]: ...

    @property
    def device(self) -> torch.device: ...

    @property
    def dtype(self) -> torch.dtype: ...

    def to(self, *args: Any, **kwargs: Any) -> Self: ...

    def set_progress_bar_config(self, **kwargs: Any) -> Any: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...


if TYPE_CHECKING:
    from diffusers.pipelines.controlnet.pipeline_controlnet import StableDiffusionControlNetPipeline
    from diffusers.pipelines.controlnet.pipeline_controlnet_img2img import (
        StableDiffusionControlNetImg2ImgPipeline,
    )
    from diffusers.pipelines.controlnet.pipeline_controlnet_inpaint import (
        StableDiffusionControlNetInpaintPipeline,
    )
    from diffusers.pipelines.controlnet.pipeline_controlnet_inpaint_sd_xl import (
        StableDiffusionXLControlNetInpaintPipeline,
    )
    from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl import StableDiffusionXLControlNetPipeline
    from diffusers.pipelines.controlnet.pipeline_controlnet_sd_xl_img2img import (
        StableDiffusionXLControlNetImg2ImgPipeline,
    )

    def _diffusers_pipelines_fit(
        sd: StableDiffusionControlNetPipeline,
        sd_img2img: StableDiffusionControlNetImg2ImgPipeline,
        sd_inpaint: StableDiffusionControlNetInpaintPipeline,
        sdxl: StableDiffusionXLControlNetPipeline,
        sdxl_img2img: StableDiffusionXLControlNetImg2ImgPipeline,
        sdxl_inpaint: StableDiffusionXLControlNetInpaintPipeline,
    ) -> list[ControlNetPipeline]:
        """Never called: the type checker fails here when a diffusers pipeline no longer fits the Protocol."""
        return [sd, sd_img2img, sd_inpaint, sdxl, sdxl_img2img, sdxl_inpaint]
