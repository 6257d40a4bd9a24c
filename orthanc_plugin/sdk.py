"""The Orthanc SDK behind one name: the plugin's modules say `from .sdk import orthanc` and call
`orthanc.RestApiGet(...)` as they would the SDK's own module.

Inside Orthanc that is the `orthanc` module the Python plugin provides (imported on first use). Outside
it the plugin's logic still imports, so it runs in ordinary unit tests: a test installs a small fake
SDK object with use() (tests/test_orthanc_plugin_logic.py); without one, a call says what is missing.
"""

from __future__ import annotations

_installed: list = []  # the SDK in use: the real module, or a test's fake


def use(sdk) -> None:
    """Use this object as the SDK (a test's fake); None: the real module again."""
    _installed[:] = [] if sdk is None else [sdk]


def current():
    if not _installed:
        try:
            import orthanc as real
        except ImportError:
            raise RuntimeError("the Orthanc SDK is only there inside Orthanc (tests: orthanc_plugin.sdk.use(fake))") \
                from None
        _installed[:] = [real]
    return _installed[0]


class _Sdk:
    """Every attribute is the SDK's (looked up at call time, so use() applies to modules already imported)."""

    def __getattr__(self, name: str):
        return getattr(current(), name)


orthanc = _Sdk()
