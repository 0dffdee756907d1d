"""The exceptions and warnings hgc-tune raises.

Every error a user can cause derives from :class:`HgcTuneError`; the CLI prints its message without a
traceback (unless ``--debug``) and exits with status 2, or 1 for a :class:`ResourceError` (the environment
failed: a full disk, not enough memory, an unreachable server).
"""

from __future__ import annotations

__all__ = [
    "HgcTuneError",
    "ModelLoadError",
    "UnknownPresetError",
    "ModelNotFoundError",
    "NotAPipelineError",
    "IncompatibleControlNetError",
    "UnknownConditionError",
    "ShapesWeightsMissingError",
    "UnregisteredModelError",
    "PolicyError",
    "PolicyFormatError",
    "PolicyMismatchError",
    "PolicyAlreadyAppliedError",
    "StepCountMismatchError",
    "DatasetError",
    "ProfileError",
    "SearchError",
    "FidelityError",
    "ReportError",
    "InputFileError",
    "ImageFileError",
    "ResourceError",
    "OutOfMemoryError",
    "DiskFullError",
    "StorageError",
    "StorageUnreachableError",
    "TrainingCheckpointError",
    "ProvenanceMismatchWarning",
    "PromptUnguardedWarning",
]


class HgcTuneError(Exception):
    """Base class of every error caused by user input or environment."""


class ModelLoadError(HgcTuneError):
    """A model or pipeline could not be built or loaded."""


class UnknownPresetError(ModelLoadError):
    """A preset name that hgc-tune does not know."""


class ModelNotFoundError(ModelLoadError):
    """A local path that does not exist, or a hub id that cannot be reached."""


class NotAPipelineError(ModelLoadError):
    """A directory that is not a diffusers pipeline (or model) directory."""


class IncompatibleControlNetError(ModelLoadError):
    """A ControlNet whose channels or conditioning do not fit the base U-Net."""


class UnknownConditionError(ModelLoadError):
    """A condition type the ``shapes`` preset has no ControlNet for (or none given)."""


class ShapesWeightsMissingError(ModelNotFoundError):
    """The ``shapes`` weights have not been trained and copied into the package."""


class UnregisteredModelError(HgcTuneError):
    """A model class that hgc-tune has no block registry entry for."""


class PolicyError(HgcTuneError):
    """Base class of policy errors."""


class PolicyFormatError(PolicyError):
    """A policy file or object that violates the policy format."""


class PolicyMismatchError(PolicyError):
    """A policy that does not fit the pipeline it is applied to."""


class PolicyAlreadyAppliedError(PolicyError):
    """A policy applied to a pipeline that already has one applied."""


class StepCountMismatchError(PolicyError):
    """A pipeline call whose number of denoising steps differs from the policy's."""


class DatasetError(HgcTuneError):
    """A dataset folder or row that violates the dataset format."""


class ProfileError(HgcTuneError):
    """A profile artifact that is missing, truncated, tampered with or does not fit."""


class SearchError(HgcTuneError):
    """Bad search input (budget, metric, profile, split)."""


class FidelityError(HgcTuneError):
    """Bad fidelity-metric input."""


class ReportError(HgcTuneError):
    """Bad report input: a Pareto file that violates its format, or a policy that does not fit the profile."""


class InputFileError(HgcTuneError):
    """A path given as an input file that is not a regular file (a folder, a FIFO, a device) or cannot be
    read."""


class ImageFileError(InputFileError):
    """An image input (condition, init, mask or dataset image) that is not a readable image: truncated,
    corrupt, or a decompression bomb (more pixels than hgc-tune decodes)."""


class ResourceError(HgcTuneError):
    """The environment failed, not the input (a full disk, no memory, an unreachable server): exit 1."""


class DiskFullError(ResourceError):
    """A file could not be written: no space left on its device, or the disk quota is exceeded."""


class StorageError(SearchError):
    """A search storage that cannot be opened: a missing or read-only folder, a file that is no database."""


class StorageUnreachableError(StorageError, ResourceError):
    """A search storage's server that refuses the connection or does not answer within the timeout."""


class OutOfMemoryError(ResourceError):
    """A model or input that does not fit in the memory this process can get."""


class TrainingCheckpointError(HgcTuneError):
    """A training checkpoint that cannot be resumed: unreadable, not written by the shapes trainer, without
    its run settings, or holding the weights of another model."""


class ProvenanceMismatchWarning(UserWarning):
    """A tuned policy applied to other weights, or called at another guidance scale, than those its
    provenance's figures were measured on: the policy still fits and runs, but its figures may not hold."""


class PromptUnguardedWarning(UserWarning):
    """A checkpoint is profiled, searched, evaluated or reported with no prompt-adherence metric (no
    ``--clip``): a policy's figures then guard the condition, not what only the prompt carries."""
