# Typed frame errors. Every way a frame can be bad has its own class and a `reason` code that
# the gateway counts and logs; catching FrameError catches them all.


class FrameError(ValueError):
    reason = "frame_error"


class Truncated(FrameError):
    reason = "truncated"


class Oversize(FrameError):
    reason = "oversize"


class BadMagic(FrameError):
    reason = "bad_magic"


class UnsupportedVersion(FrameError):
    reason = "unsupported_version"


class UnsupportedKind(FrameError):
    reason = "unsupported_kind"


class BadLength(FrameError):
    # Declared body length does not fit the kind, or bytes trail the tag.
    reason = "bad_length"


class BadField(FrameError):
    # A header or body field is outside what v1 allows (meter id charset, ranges).
    reason = "bad_field"


class BadTag(FrameError):
    reason = "bad_tag"


class BadPadding(FrameError):
    reason = "bad_padding"


class WrongMeter(FrameError):
    # Header meter id differs from the meter id in the MQTT topic it arrived on.
    reason = "wrong_meter"


ALL = (Truncated, Oversize, BadMagic, UnsupportedVersion, UnsupportedKind, BadLength,
       BadField, BadTag, BadPadding, WrongMeter)
REASONS = tuple(cls.reason for cls in ALL)
