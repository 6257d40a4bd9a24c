"""The protection targets per strength level, on our own evaluation models: each with its measured value and
whether it is met."""

from __future__ import annotations

# accuracy bounds (<=) per third party, readability bounds (>=) over the anatomy
LEVEL_TARGETS = {
    "standard": {"plain": 0.35, "careful": 0.50, "removal_unet": 0.60, "mark_inpainted": 0.60, "jpeg_q75": 0.40,
                 "contrast_transmission": 0.75, "ssim_anatomy": 0.85},
    "strong": {"plain": 0.20, "careful": 0.35, "removal_unet": 0.50, "mark_inpainted": 0.50, "jpeg_q75": 0.25,
               "contrast_transmission": 0.60, "ssim_anatomy": 0.75},
}
READABILITY = ("contrast_transmission", "ssim_anatomy")
# dermoscopy is scored by balanced accuracy against a factor of its clean value (standard only)
BALANCED_FACTOR = {"standard": 0.5}


def level_targets(third_parties: dict, readability: dict, balanced: bool = False) -> dict[str, list[dict]]:
    """{level: [{target, bound, value, met}]} for the third parties and readability measured."""
    out = {}
    for level, bounds in LEVEL_TARGETS.items():
        rows = []
        for key, bound in bounds.items():
            if key in READABILITY:
                value = readability.get(key)
                if value is not None:
                    rows.append({"target": key, "bound": f">= {bound}", "value": value, "met": value >= bound})
                continue
            # careful: the models trained with the tool's own marks where measured, else the random-logo ones
            party = third_parties.get("careful_marks" if key == "careful" and "careful_marks" in third_parties
                                      else key)
            if party is None or party["mean"].get("protected") is None:
                continue
            value = party["mean"]["protected"]
            if balanced:
                if level not in BALANCED_FACTOR:
                    continue
                limit = BALANCED_FACTOR[level] * party["mean"]["clean"]
                label = f"<= {BALANCED_FACTOR[level]}x clean ({limit:.3f})"
            else:
                limit, label = bound, f"<= {bound}"
            rows.append({"target": key, "bound": label, "value": value, "met": value <= limit + 1e-9})
        out[level] = rows
    return out
