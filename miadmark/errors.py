"""Exceptions raised by the core. Messages name the reason, never patient data.

Adapters add the file name or SOP Instance UID; the CLI prints `FILE: reason`.
"""

import re


class MiadmarkError(Exception):
    """Base class: anything the core refuses on purpose."""


class InvalidInputError(MiadmarkError):
    """Not DICOM, truncated, or missing what an image needs."""


class UnsupportedImageError(MiadmarkError):
    """Pixel data that does not decode, or a layout the core cannot map exactly."""


class AlreadyProtectedError(MiadmarkError):
    """protect() was given an object that already carries a restoration record."""


class NotProtectedError(MiadmarkError):
    """strip() was given an object with no restoration record."""


class KeyLoadError(MiadmarkError):
    """A key or certificate could not be read (wrong passphrase, bad PEM)."""


class KeyExistsError(MiadmarkError):
    """A key file is already there: replacing it would make what was encrypted to it unrecoverable."""


class NoRecipientKeyError(MiadmarkError):
    """None of the keys held is a recipient of the record."""


class RecordCorruptError(MiadmarkError):
    """The record does not decrypt or parse (tampered, truncated, wrong key)."""


class SignatureInvalidError(MiadmarkError):
    """The signature over the record does not verify."""


class UntrustedSignerError(MiadmarkError):
    """The record verifies but its signer is not in the trust list."""


class IntegrityError(MiadmarkError):
    """The rebuilt original does not match the hash in the record (pixels or attributes changed)."""


class BurnedInAnnotationError(MiadmarkError):
    """A de-identified route was given an object that declares text burned into its pixels."""


class UnexpectedInputError(InvalidInputError):
    """The last-resort net: input made the core fail where no check named the problem yet.

    Still a refusal (fail closed, one input only); the fuzzer counts these apart, each is a missing check.
    """


_QUOTED = re.compile(r"""b?(['"]).*?(?<!\\)\1""", re.DOTALL)


def safe_reason(exc: BaseException, limit: int = 160) -> str:
    """`Type: first line` of a third-party exception with every quoted value replaced by '...'.

    Library messages quote the offending value (a malformed DS, a UID, raw bytes); errors and
    quarantine reasons must name the element, never echo its value.
    """
    text = " ".join(line.strip() for line in str(exc).splitlines()[:1] if line.strip())
    text = _QUOTED.sub("'...'", text)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def unexpected_input(exc: BaseException, doing: str) -> MiadmarkError:
    """exc itself when it is a refusal already; otherwise the net's UnexpectedInputError, value-free."""
    if isinstance(exc, MiadmarkError):
        return exc
    return UnexpectedInputError(f"input not supported: {type(exc).__name__} while {doing}")
