"""The session's settings and the scripting methods that change them, validated before anything changes.

``SettingsActions`` is mixed into ``_session.Session``: ``session.set_intensity("ct", "lung")``,
``session.set_roi_zoom("off")``, ... Each builds the new ``Settings`` on a copy, checks it (the
intensity it gives, the channel axis against the image layer, the ROI zoom word), and only then
replaces the session's settings; a bad value raises ``MedSAMError`` and leaves the settings,
layers and prompt layers as they were. The widget's controls call these and show the new values.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from medsam_core import CT_WINDOWS, Intensity, MedSAMError

from . import _layers as L

INTENSITY_MODES = ("auto", "percentile", "ct", "contrast", "minmax")
ROI_ZOOM = ("auto", "on", "off")


@dataclass
class Settings:
    """User choices that change what the model sees or how masks are written."""

    intensity_mode: str = "auto"  # auto | percentile | ct | contrast | minmax
    ct_window: str = "soft_tissue"
    low: float = 0.5
    high: float = 99.5
    channel: int | str = "auto"  # how (H, W, C) becomes grey/RGB: auto, mean, max or an index
    channel_axis: int | None = None  # data axis holding channels for non-RGB nD layers
    overwrite: bool = False
    delete_removes: bool = True
    auto_segment: bool = True
    prefetch: bool = True
    negative: bool = False
    roi_zoom: str = "auto"  # auto | on | off: zoom in on small boxes (medsam_core.roi.predict_boxes)
    extra: dict = field(default_factory=dict)


def intensity_of(settings: Settings, image_layer) -> Intensity:
    """The ``Intensity`` these settings give (``contrast`` reads the image layer's contrast limits)."""
    s = settings
    if s.intensity_mode == "contrast":
        if image_layer is None:
            raise MedSAMError("intensity 'contrast' uses the image layer's contrast limits: pick an image first")
        lo, hi = (float(v) for v in image_layer.contrast_limits)
        return Intensity(mode="range", value_range=(lo, hi))
    if s.intensity_mode == "ct":
        return Intensity(mode="ct", window=s.ct_window)
    return Intensity(mode=s.intensity_mode, low=s.low, high=s.high)


def parse_channel(channel: int | str) -> int | str:
    """"auto" | "mean" | "max" | a channel index (an int, or its digits as text) -> the setting."""
    if isinstance(channel, str) and channel.lstrip("-").isdigit():
        channel = int(channel)
    if isinstance(channel, bool) or not isinstance(channel, (int, str)) or (
        isinstance(channel, str) and channel not in ("auto", "mean", "max")
    ):
        raise MedSAMError(f"unknown channel choice {channel!r}: use auto, mean, max or a channel index")
    return channel


class SettingsActions:
    """Validated setters over ``self.settings`` (mixed into Session, which owns ``image_layer``)."""

    def _candidate(self, **changes) -> Settings:
        """The settings as they would be after ``changes`` (a copy: nothing changes yet)."""
        return replace(self.settings, **changes)

    def _apply(self, new: Settings) -> None:
        """Take the checked values over in place (panels and editors keep their reference)."""
        for name in new.__dataclass_fields__:
            setattr(self.settings, name, getattr(new, name))

    def set_intensity(self, mode: str = "auto", window: str | None = None, low: float = 0.5,
                      high: float = 99.5) -> Intensity:
        """mode: auto | percentile | ct (with a CT_WINDOWS ``window``) | contrast (the image layer's
        contrast limits) | minmax; ``low``/``high`` percentiles (0 <= low < high <= 100). Changes
        the embedding key: slices are re-encoded on next use. Returns the Intensity now in use."""
        if mode not in INTENSITY_MODES:
            raise MedSAMError(f"unknown intensity mode {mode!r}: use one of {', '.join(INTENSITY_MODES)}")
        if window is not None and window not in CT_WINDOWS:
            raise MedSAMError(f"unknown CT window {window!r}: use one of {', '.join(CT_WINDOWS)}")
        try:
            low, high = float(low), float(high)
        except (TypeError, ValueError):
            raise MedSAMError(f"percentiles must be numbers, got low={low!r}, high={high!r}") from None
        new = self._candidate(intensity_mode=mode, low=low, high=high, ct_window=window or self.settings.ct_window)
        intensity = intensity_of(new, self.image_layer)  # raises on bad percentiles / contrast limits
        self._apply(new)
        self.safe(self.prefetch)
        return intensity

    def set_roi_zoom(self, setting: str = "auto") -> None:
        """ROI zoom for the next boxes: "auto" (small boxes on large images are segmented on an encoded
        crop around them, others on the cached whole-image embedding), "on" (every box) or "off"."""
        if setting not in ROI_ZOOM:
            raise MedSAMError(f"unknown ROI zoom setting {setting!r}: use auto, on or off")
        self._apply(self._candidate(roi_zoom=setting))

    def set_channel(self, channel_axis: int | None = None, channel: int | str = "auto") -> None:
        """Channel axis of a non-RGB nD image layer (None: no channel axis), and how channels become
        the model's grey/RGB input: "auto", "mean", "max" or a channel index. With an image chosen,
        its prompt and labels layers are made again for the new axes (after the checks pass)."""
        channel = parse_channel(channel)
        if channel_axis is not None and (isinstance(channel_axis, bool) or not isinstance(channel_axis, int)):
            raise MedSAMError(f"channel axis must be an axis index or None, got {channel_axis!r}")
        image = self.image_layer
        if image is not None:
            L.check_channel_axis(image, channel_axis)
        old = replace(self.settings)
        self._apply(self._candidate(channel_axis=channel_axis, channel=channel))
        if image is not None:
            try:
                self.set_image_layer(image)
            except MedSAMError:
                self._apply(old)
                raise

    def set_overwrite(self, overwrite: bool) -> None:
        """Let new objects replace existing labels (True) or fill background pixels only (False)."""
        self._apply(self._candidate(overwrite=as_flag(overwrite, "overwrite")))

    def set_delete_removes(self, delete_removes: bool) -> None:
        """Deleting a box removes its object from the labels (True) or keeps its pixels (False)."""
        self._apply(self._candidate(delete_removes=as_flag(delete_removes, "delete_removes")))

    def set_auto_segment(self, auto_segment: bool) -> None:
        """Segment each box as it is drawn (True), or only on segment_all / G (False)."""
        self._apply(self._candidate(auto_segment=as_flag(auto_segment, "auto_segment")))

    def set_negative(self, negative: bool) -> None:
        """Points clicked from now on are negative (True) or positive (False)."""
        from ._objects import NEGATIVE_COLOR, POSITIVE_COLOR

        self._apply(self._candidate(negative=as_flag(negative, "negative")))
        if self.points_layer is not None:
            self.points_layer.feature_defaults = {"positive": not negative, "label_id": 0}
            self.points_layer.current_face_color = NEGATIVE_COLOR if negative else POSITIVE_COLOR


def as_flag(value, name: str) -> bool:
    """``value`` as a bool; MedSAMError unless it is True/False (or 1/0)."""
    if not isinstance(value, (bool, int)) or isinstance(value, int) and value not in (0, 1):
        raise MedSAMError(f"{name} must be True or False, got {value!r}")
    return bool(value)
