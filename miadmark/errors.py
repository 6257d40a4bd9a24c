"""Exceptions raised by the core. Messages name the reason, never patient data.

Adapters add the file name or SOP Instance UID; the CLI prints `FILE: reason`.
"""


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
