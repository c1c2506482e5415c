"""Box filters between the detector and the segmenter: score, area, aspect, class-agnostic NMS, a cap per image."""
from __future__ import annotations

from collections import Counter
from typing import Any, Mapping

from asuka.data.largen_engine.stages import Detection


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Intersection over union of two ``(x0, y0, x1, y1)`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def filter_boxes(detections: list[Detection], width: int, height: int, cfg: Mapping[str, Any],
                 counts: Counter) -> list[Detection]:
    """The detections that pass, best score first; ``counts["boxes_<filter>"]`` += how many each filter kept.

    ``cfg``: ``min_score``; ``min_area``/``max_area`` (box area / image area); ``max_aspect`` (long side / short side);
    ``nms_iou`` (a box overlapping a better kept one by more is dropped, whatever the tags); ``max_per_image``.
    """
    counts["boxes_detected"] += len(detections)
    kept = [d for d in detections if d.score >= cfg["min_score"]]
    counts["boxes_score"] += len(kept)
    image_area = float(width * height)
    kept = [d for d in kept if cfg["min_area"] <= d.width * d.height / image_area <= cfg["max_area"]]
    counts["boxes_area"] += len(kept)
    kept = [d for d in kept if min(d.width, d.height) > 0 and
            max(d.width, d.height) / min(d.width, d.height) <= cfg["max_aspect"]]
    counts["boxes_aspect"] += len(kept)
    survivors: list[Detection] = []
    for det in sorted(kept, key=lambda d: -d.score):  # stable: ties keep the detector's order
        if all(box_iou(det.box, s.box) <= cfg["nms_iou"] for s in survivors):
            survivors.append(det)
    counts["boxes_nms"] += len(survivors)
    survivors = survivors[: int(cfg["max_per_image"])]
    counts["boxes_kept"] += len(survivors)
    return survivors
