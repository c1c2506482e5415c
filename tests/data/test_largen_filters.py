"""Every filter of the data engine keeps and drops exactly the instances it should; the stand-in stages find the
objects drawn on the procedural scenes."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageDraw

from asuka.data.largen_engine.box_filters import box_iou, filter_boxes
from asuka.data.largen_engine.mask_filters import count_mask_filters, mask_box, mask_rejection
from asuka.data.largen_engine.pipeline import mine_batch
from asuka.data.largen_engine.samples import OBJECT_COLOURS, standin_stages
from asuka.data.largen_engine.stages import Detection, build_stages
from asuka.data.largen_engine.tagger import filter_tags
from asuka.utils.errors import ConfigError

BOXES = {"min_score": 0.3, "min_area": 0.01, "max_area": 0.5, "max_aspect": 3.0, "nms_iou": 0.5, "max_per_image": 3}
MASKS = {"min_score": 0.8, "min_area": 0.01, "min_fill": 0.3, "min_inside": 0.9, "min_main_component": 0.9}


def test_tag_filter_blacklist_score_and_cap():
    found = [("dog", 0.5), ("Sky", 0.9), ("cat", 0.05), ("ball", 0.3), ("kite", 0.2)]
    counts = Counter()
    kept = filter_tags(found, {"blacklist": ["sky"], "min_score": 0.1, "max_per_image": 2}, counts)
    assert kept == [("dog", 0.5), ("ball", 0.3)]  # Sky: blacklisted (any case); cat: low; kite: over the cap
    assert (counts["tags_found"], counts["tags_blacklist"], counts["tags_score"], counts["tags_kept"]) == (5, 4, 3, 2)
    assert filter_tags(found, {"blacklist": [], "min_score": 0.0, "max_per_image": 9}, Counter())[0] == ("Sky", 0.9)


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert box_iou((0, 0, 10, 10), (10, 10, 20, 20)) == 0.0


def test_box_filters_drop_exactly_the_bad_boxes():
    # a 100 x 100 image: each box below fails one filter, except the good ones
    good = Detection("dog", (10, 10, 30, 40), 0.9)
    dets = [
        Detection("cat", (50, 50, 70, 70), 0.2),       # score
        Detection("cat", (0, 0, 5, 5), 0.9),           # area: 0.25% < 1%
        Detection("car", (0, 0, 90, 90), 0.9),         # area: 81% > 50%
        Detection("pole", (60, 0, 66, 40), 0.9),       # aspect 6.7 > 3
        good,
        Detection("cat", (11, 11, 31, 41), 0.8),       # NMS: IoU 0.84 with the better dog box, another tag
        Detection("ball", (25, 10, 45, 40), 0.5),      # IoU 0.2 with dog: kept
        Detection("kite", (60, 60, 80, 80), 0.45),     # kept
        Detection("vase", (60, 10, 80, 30), 0.4),      # over max_per_image (4th best)
    ]
    counts = Counter()
    kept = filter_boxes(dets, 100, 100, BOXES, counts)
    assert [d.tag for d in kept] == ["dog", "ball", "kite"]
    assert [counts[f"boxes_{k}"] for k in ("detected", "score", "area", "aspect", "nms", "kept")] == [9, 8, 6, 5, 4, 3]


def _mask(shape=(100, 100), rects=()):
    m = np.zeros(shape, dtype=bool)
    for x0, y0, x1, y1 in rects:
        m[y0:y1, x0:x1] = True
    return m


def test_mask_filters_reject_each_fault():
    box = (20, 20, 60, 60)
    good = _mask(rects=[(25, 25, 55, 55)])
    assert mask_rejection(good, 0.9, box, MASKS) is None
    assert mask_rejection(good, 0.7, box, MASKS) == "score"
    assert mask_rejection(_mask(rects=[(30, 30, 35, 35)]), 0.9, box, MASKS) == "area"  # 0.25% of the image
    assert mask_rejection(_mask(), 0.9, box, MASKS) == "area"  # empty
    assert mask_rejection(_mask(rects=[(20, 20, 40, 40)]), 0.9, box, MASKS) == "fill"  # 25% of the box
    assert mask_rejection(_mask(rects=[(25, 25, 55, 55), (60, 0, 100, 20)]), 0.9, box, MASKS) == "inside"  # leaks
    assert mask_rejection(_mask(rects=[(20, 20, 38, 60), (42, 20, 60, 60)]), 0.9, box, MASKS) == "components"
    diagonal = _mask(rects=[(20, 20, 40, 40), (40, 40, 60, 60)])  # touching corners: one 8-connected piece
    assert mask_rejection(diagonal, 0.9, box, {**MASKS, "min_fill": 0.0}) is None
    assert mask_box(good) == (25, 25, 55, 55)


def test_mask_filter_counts_are_cumulative():
    counts = Counter()
    count_mask_filters([None, "score", "fill", None, "components"], counts)
    assert [counts[f"masks_{k}"] for k in ("segmented", "score", "area", "fill", "inside", "components")] == \
        [5, 4, 4, 3, 3, 2]


def _scene_with(objects, size=96):
    img = Image.new("RGB", (size, size), (90, 140, 200))
    draw = ImageDraw.Draw(img)
    for tag, rect in objects:
        draw.rectangle(rect, fill=OBJECT_COLOURS[tag])
    return img


FILTERS = {"tags": {"blacklist": [], "min_score": 0.5, "max_per_image": 5}, "boxes": {**BOXES, "max_per_image": 9},
           "masks": {**MASKS, "min_score": 0.5}, "captions": {"min_words": 2}}


def test_standin_chain_finds_the_drawn_objects():
    img = _scene_with([("ball", (10, 10, 29, 29)), ("box", (50, 40, 79, 59)), ("box", (2, 80, 3, 81))])
    counts = Counter()
    (found,) = mine_batch([img], build_stages(standin_stages()), FILTERS, counts)
    assert sorted((m.tag, m.box, m.caption) for m in found) == [("ball", (10, 10, 30, 30), "a red ball"),
                                                                ("box", (50, 40, 80, 60), "a blue box")]
    assert counts["boxes_detected"] == 3 and counts["boxes_area"] == 2  # the 2x2 box speck is too small
    for m in found:
        x0, y0, x1, y1 = m.box
        assert m.mask.sum() == (x1 - x0) * (y1 - y0) and np.asarray(m.subject_mask).all()


class _Captions:
    """A captioner giving a fixed list of replies."""

    def __init__(self, replies):
        self.replies = replies

    def __call__(self, subjects, tags):
        return self.replies[: len(subjects)]


def test_caption_filter_drops_short_captions():
    img = _scene_with([("ball", (10, 10, 29, 29)), ("box", (50, 40, 79, 59))])
    stages = build_stages(standin_stages())
    stages.captioner = _Captions(["  a  shiny\nball ", "box"])
    counts = Counter()
    (found,) = mine_batch([img], stages, FILTERS, counts)
    assert [(m.tag, m.caption) for m in found] == [("ball", "a shiny ball")]  # whitespace normalised; 1 word dropped
    assert counts["captions_kept"] == 1


def test_unknown_stage_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="stages.segmenter.kind"):
        build_stages({**standin_stages(), "segmenter": {"kind": "nope"}})
    with pytest.raises(ConfigError, match="cannot import 'nowhere.mod:X'"):
        build_stages({**standin_stages(), "tagger": {"kind": "nowhere.mod:X"}})
