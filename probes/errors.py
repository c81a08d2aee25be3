"""The one exception family that users see.

Every bad-input condition raises a subclass of :class:`MechscopeError` whose message is a
single human-readable line. The CLI prints it and exits non-zero; the dashboard shows it
with ``st.error``. Anything else escaping is a bug.
"""


class MechscopeError(Exception):
    """Base class: a user-facing, one-line error."""


class UnknownModelError(MechscopeError):
    pass


class ModelNotAvailableError(MechscopeError):
    """The model is known but its weights cannot be had on this machine."""


class MissingPackageError(MechscopeError):
    pass


class ChecksumError(MechscopeError):
    pass


class InputError(MechscopeError):
    """Bad prompt, index out of range, inconsistent parameters."""


def check_range(name: str, value: int, upper: int) -> int:
    """Raise InputError unless 0 <= value < upper."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < upper:
        raise InputError(f"{name} {value!r} is out of range: this model has {upper} (valid 0..{upper - 1}).")
    return value
