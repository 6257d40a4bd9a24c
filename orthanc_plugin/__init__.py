"""MIAD-MARK inside Orthanc: exports go through the routing rules, ingestion strips.

Orthanc loads orthanc_plugin/plugin.py (the "PythonScript"); the rest of this package is plain
Python, importable in tests without Orthanc (except exports.py and service.py, which import
Orthanc's `orthanc` module).
"""
