"""Errors the model library raises for bad input: clear messages, raised before any tensor work."""


class RegionScribeError(ValueError):
    """Base class: the input cannot be described as given."""


class ImageError(RegionScribeError):
    """The bytes are not a usable image (not an image, truncated, too large, decompression bomb...)."""


class BoxError(RegionScribeError):
    """A box is empty, inverted, has no area inside the image, or is not four finite numbers."""


class MaskError(RegionScribeError):
    """A region's mask is not a boolean (H, W) array of the image, is empty, or has pixels outside its box."""


class PlaceholderError(RegionScribeError):
    """The number of <bbox> placeholders in a prompt does not match the number of boxes given."""


class DemonstrationError(RegionScribeError):
    """A demonstration has no answer, or a region token of the wrong size, or does not fit the model."""
