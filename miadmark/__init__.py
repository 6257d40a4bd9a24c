"""MIAD-MARK: visible adversarial watermarks for DICOM, removable bit-exactly by authorized sites."""

__version__ = "0.1.0"
