"""The stage chain of the data engine over one batch of images: tag -> detect -> filter boxes -> segment -> filter
masks -> cut out -> caption."""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
from PIL import Image

from asuka.data.largen_engine.box_filters import filter_boxes
from asuka.data.largen_engine.mask_filters import count_mask_filters, mask_box, mask_rejection
from asuka.data.largen_engine.stages import Stages
from asuka.data.largen_engine.tagger import filter_tags
from asuka.data.quadruplets import cut_out_subject


COUNTERS = {  # what the run counts, stage by stage: items that entered, then items each filter kept
    "images": ("seen", "unreadable"),
    "tags": ("found", "blacklist", "score", "kept"),
    "boxes": ("detected", "score", "area", "aspect", "nms", "kept"),
    "masks": ("segmented", "score", "area", "fill", "inside", "components"),
    "captions": ("kept",),
}


@dataclass
class MinedInstance:
    """An instance that passed every filter: its mask (bool, scene size), tight box, cut-out and caption."""

    tag: str
    mask: np.ndarray
    box: tuple[int, int, int, int]
    subject: Image.Image
    subject_mask: Image.Image
    caption: str
    scores: dict[str, float]


def mine_batch(images: list[Image.Image], stages: Stages, filters: Mapping[str, Any], counts: Counter
               ) -> list[list[MinedInstance]]:
    """The kept instances of each image, in detector-score order; ``counts`` gains every stage's numbers."""
    tags = [filter_tags(found, filters["tags"], counts) for found in stages.tagger(images)]
    detections = stages.detector(images, [[t for t, _ in found] for found in tags])
    boxes = [filter_boxes(dets, img.width, img.height, filters["boxes"], counts)
             for img, dets in zip(images, detections)]
    masks = stages.segmenter(images, [[d.box for d in dets] for dets in boxes])
    pending: list[tuple[int, MinedInstance]] = []
    for i, (img, dets, segs) in enumerate(zip(images, boxes, masks)):
        tag_scores = dict(tags[i])
        rejections = [mask_rejection(m, s, d.box, filters["masks"]) for d, (m, s) in zip(dets, segs)]
        count_mask_filters(rejections, counts)
        for det, (mask, score), why in zip(dets, segs, rejections):
            if why is not None:
                continue
            box = mask_box(mask)
            subject, subject_mask = cut_out_subject(img, mask, box)
            scores = {"tag": tag_scores.get(det.tag, 0.0), "box": det.score, "mask": score}
            pending.append((i, MinedInstance(det.tag, mask, box, subject, subject_mask, "", scores)))
    captions = stages.captioner([m.subject for _, m in pending], [m.tag for _, m in pending]) if pending else []
    out: list[list[MinedInstance]] = [[] for _ in images]
    min_words = int(filters["captions"]["min_words"])
    for (i, inst), caption in zip(pending, captions):
        caption = " ".join(caption.split())
        if len(caption.split()) >= min_words:
            inst.caption = caption
            out[i].append(inst)
    counts["captions_kept"] += sum(len(o) for o in out)
    return out
