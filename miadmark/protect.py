"""The two verbs: protect(dataset) and strip(dataset). Everything else calls these."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from cryptography import x509
from pydicom.dataset import Dataset

from .engine import DEFAULT_PROFILE, Engine, Profile
from .keys import Identity


def protect(ds: Dataset, *, recipients: Sequence[x509.Certificate], signer: Identity,
            profile: str | Profile = DEFAULT_PROFILE, device: str = "auto",
            lesion_mask: np.ndarray | None = None, engine: Engine | None = None) -> Dataset:
    """Return a protected copy of ds (ds itself is not modified). See protect_many."""
    raise NotImplementedError("core protect is being written (issue 3)")


def strip(ds: Dataset, *, keyring: Sequence[Identity], trust: Sequence[x509.Certificate] | None) -> Dataset:
    """Return the bit-exact original of a protected ds. trust=None accepts any signer."""
    raise NotImplementedError("core strip is being written (issue 3)")


def is_protected(ds: Dataset) -> bool:
    return "EncryptedAttributesSequence" in ds
