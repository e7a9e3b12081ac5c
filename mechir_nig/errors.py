"""Exceptions and warnings raised by mechir_nig. Every message says what to fix."""

from __future__ import annotations


class MechirNigError(Exception):
    """Base class of every error raised by mechir_nig."""


class InputError(MechirNigError, ValueError):
    """A bad argument: empty text, mismatched lengths, an unknown option, a wrong shape."""


class ModelLoadError(MechirNigError, OSError):
    """A checkpoint could not be found or fetched (missing folder, hub id while offline)."""


class UnsupportedArchitectureError(MechirNigError, ValueError):
    """A checkpoint whose architecture the hooked port does not implement."""


class TruncationWarning(UserWarning):
    """Some documents were longer than ``max_length`` and were truncated (reported in the batch)."""


class DataError(MechirNigError, ValueError):
    """A malformed or inconsistent data file (bad line, duplicate id, empty text) or a data set that
    could not be fetched; the message names the file and line and says what to fix."""


class PostLayerNormError(MechirNigError, NotImplementedError):
    """A TransformerLens method that assumes a pre-LN residual stream (a sum of component outputs,
    one final LayerNorm) was called on a post-LN encoder, where it would return wrong numbers."""


class DataWarning(UserWarning):
    """A data set is usable but incomplete or inconsistent: qrels naming unknown documents, records
    skipped for an empty text, a relevance scale that was not stated. The counts are in the
    ``report`` of the object returned (``Collection.report``, ``JudgedPairs.report``)."""


class NoScoreChangeWarning(UserWarning):
    """A perturbation does not move some pairs' scores: their patching recovery is NaN (undefined)."""


class CheckpointError(MechirNigError, OSError):
    """A checkpoint or output file that cannot be used: its path cannot be written, or the file is
    truncated, corrupt (its checksum does not match), or not a mechir_nig file; the message names the
    file and what to do (delete or move it away, or pass another path)."""


class CheckpointLockedError(CheckpointError):
    """Another live process is writing the same output (its ``.lock`` file names the pid and host)."""


class DistributedError(MechirNigError, RuntimeError):
    """A torch.distributed run that cannot go on: a half-configured launch (``RANK`` without
    ``WORLD_SIZE``...), a model on another rank's GPU, or a step that failed on another rank (the
    message names the rank and its error, so every rank stops instead of waiting forever)."""


class PrecisionError(MechirNigError, FloatingPointError):
    """A score, embedding or attribution came out NaN or infinite: in float16 the activations overflowed
    its range (largest value 65504); the message says which dtype to load instead (bfloat16 keeps
    float32's range). Raised instead of returning garbage."""
