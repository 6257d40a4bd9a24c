"""The protected object is a derived image: Image Type Value 1 DERIVED, and a header valid for that.

In the enhanced MR IODs some attributes are asked for only while Image Type Value 1 is ORIGINAL or
MIXED: they are dropped from the protected object when the original carried them as such, as
validators (dciodvfy) refuse them on a DERIVED image. They describe the acquisition of the original,
which strip gives back with them.
"""

from __future__ import annotations

from pydicom.dataset import Dataset

ENHANCED_MR = ("1.2.840.10008.5.1.4.1.1.4.1", "1.2.840.10008.5.1.4.1.1.4.3")  # Enhanced MR (Color) Image Storage
# Type 1C "Required if Image Type (0008,0008) Value 1 is ORIGINAL or MIXED" in those IODs (the classic MR
# Image module has MR Acquisition Type as Type 2: only the enhanced IODs lose them)
ORIGINAL_ONLY = (
    # MR Pulse Sequence Module (PS3.3 C.8.13.4)
    "PulseSequenceName", "MRAcquisitionType", "EchoPulseSequence", "MultipleSpinEcho", "MultiPlanarExcitation",
    "PhaseContrast", "TimeOfFlightContrast", "SteadyStatePulseSequence", "EchoPlanarPulseSequence",
    "SaturationRecovery", "SpectrallySelectedSuppression", "OversamplingPhase", "GeometryOfKSpaceTraversal",
    "RectilinearPhaseEncodeReordering", "SegmentedKSpaceTraversal", "CoverageOfKSpace", "NumberOfKSpaceTrajectories",
    # Bulk Motion Synchronization Module (PS3.3 C.7.6.18.3)
    "BulkMotionCompensationTechnique", "BulkMotionSignalSource",
)


def image_type_values(ds: Dataset) -> list[str]:
    """Image Type as a list of values (pydicom gives a str for one value, a MultiValue for several)."""
    value = ds.get("ImageType")
    if value is None or value == "":
        return []
    return [str(value)] if isinstance(value, (str, bytes)) else [str(v) for v in value]


def mark_derived(prot: Dataset, original: Dataset) -> None:
    """Image Type Value 1 DERIVED (the rest kept; Value 2 SECONDARY where the original has none, as
    Image Type needs two values), and the ORIGINAL-only attributes dropped."""
    values = image_type_values(original) or ["DERIVED"]
    was_original = values[0].strip().upper() in ("ORIGINAL", "MIXED")
    values[0] = "DERIVED"
    prot.ImageType = values if len(values) > 1 else values + ["SECONDARY"]
    if was_original and str(original.get("SOPClassUID", "")) in ENHANCED_MR:
        for keyword in ORIGINAL_ONLY:
            if keyword in prot:
                del prot[keyword]
