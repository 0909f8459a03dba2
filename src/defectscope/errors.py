"""User-facing errors: each carries one sentence that names the file (if any) and the problem."""

from __future__ import annotations


class DefectscopeError(Exception):
    """Base class for errors shown to the user as one clear sentence (no traceback)."""


class ImageReadError(DefectscopeError):
    """An image or mask file cannot be read (missing, zero bytes, truncated, not an image)."""


class DatasetError(DefectscopeError):
    """A dataset layout is inconsistent: missing mask, mask size mismatch, empty folder, ..."""


class BackboneError(DefectscopeError):
    """A backbone cannot be built: unknown name, weights not found offline, bad layer choice."""


class ConfigError(DefectscopeError):
    """A parameter value is invalid (e.g. batch too small for mutual scoring)."""


class ModelFileError(DefectscopeError):
    """A saved model file belongs to another method or version, or is damaged."""


class NotFittedError(DefectscopeError):
    """A trained method was asked to predict, save or export before it was fitted or loaded."""


class MemoryLimitError(DefectscopeError):
    """A run would need more memory than the machine has; refused before any heavy work."""


class ReviewError(DefectscopeError):
    """An output folder cannot be reviewed: no scores table, malformed review.csv, bad export."""
