"""The data engine's transformers stages on tiny random models of the real classes, saved as local folders (model +
processor, tokenizers built from small vocabularies: asuka.data.largen_engine.tiny), so the adapters' real loading and
inference code runs."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers as T
from PIL import Image

from asuka.data.largen_engine.captioner import LlavaCaptioner
from asuka.data.largen_engine.detector import GroundingDinoDetector, tag_prompt
from asuka.data.largen_engine.segmenter import SamSegmenter
from asuka.data.largen_engine.tagger import ClipTagger
from asuka.data.largen_engine.tiny import LLAVA_PROMPT, build_tiny_models


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict[str, str]:
    return build_tiny_models(tmp_path_factory.mktemp("tiny_models"))


def _images() -> list[Image.Image]:
    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((40, 50), (60, 30))]


def test_clip_tagger_is_the_softmax_of_clip_logits(tiny):
    vocab = ["ball", "box", "kite"]
    tagger = ClipTagger(tiny["tagger"], vocab, prompt="a photo of a {}.")
    images = _images()
    got = tagger(images)
    model, proc = T.CLIPModel.from_pretrained(tiny["tagger"]), T.AutoProcessor.from_pretrained(tiny["tagger"])
    with torch.no_grad():
        ref = model(**proc(text=[f"a photo of a {t}." for t in vocab], images=images, return_tensors="pt",
                           padding=True)).logits_per_image.softmax(-1)
    for row, ref_row in zip(got, ref):
        assert [t for t, _ in row] == vocab
        assert [s for _, s in row] == pytest.approx(ref_row.tolist(), abs=1e-5)


def test_grounding_dino_boxes_and_tags_against_the_raw_outputs(tiny):
    tags = [["ball", "red box"], ["kite"]]
    images = _images()
    detector = GroundingDinoDetector(tiny["detector"], box_threshold=0.0)
    assert [len(d) for d in detector(images, tags)] == [10, 10]  # threshold 0: every query
    got = [detector([img], [t])[0] for img, t in zip(images, tags)]  # the reference runs unpadded single images
    model = T.GroundingDinoForObjectDetection.from_pretrained(tiny["detector"]).eval()
    proc = T.AutoProcessor.from_pretrained(tiny["detector"])
    assert tag_prompt(tags[0]) == ("ball. red box.", [(0, 4), (6, 13)])
    for img, img_tags, dets in zip(images, tags, got):
        batch = proc(images=[img], text=[tag_prompt(img_tags)[0]], return_tensors="pt")
        with torch.no_grad():
            out = model(**batch)
        ref = proc.post_process_grounded_object_detection(out, batch["input_ids"], threshold=-1.0, text_threshold=0.0,
                                                          target_sizes=[img.size[::-1]])[0]
        w, h = img.size
        clamped = ref["boxes"].clamp(min=0).minimum(torch.tensor([w, h, w, h], dtype=torch.float32))
        assert torch.allclose(torch.tensor([d.box for d in dets]), clamped, atol=1e-3)
        ids = batch["input_ids"][0].tolist()
        word = {w: i for i, w in enumerate(proc.tokenizer.convert_ids_to_tokens(ids))}
        probs = out.logits[0].sigmoid()
        spans = {t: [word[x] for x in t.split()] for t in img_tags}  # each word is one token of this vocabulary
        for q, det in enumerate(dets):
            per_tag = {t: float(probs[q, ks].max()) for t, ks in spans.items()}
            assert det.tag == max(per_tag, key=per_tag.get)
            assert det.score == pytest.approx(per_tag[det.tag], abs=1e-5)


def test_grounding_dino_threshold_drops_low_queries(tiny):
    images, tags = _images(), [["ball"], []]
    every = GroundingDinoDetector(tiny["detector"], box_threshold=0.0)(images, tags)
    cut = sorted(d.score for d in every[0])[5]
    kept = GroundingDinoDetector(tiny["detector"], box_threshold=cut)(images, tags)
    assert sorted(d.score for d in kept[0]) == pytest.approx([s for s in sorted(d.score for d in every[0]) if s >= cut])
    assert every[1] == kept[1] == []  # no tags: no call, no boxes


def test_sam_padded_batch_matches_single_images(tiny):
    images = _images()
    boxes = [[(2.0, 3.0, 30.0, 35.0), (10.0, 5.0, 45.0, 20.0)], [(1.0, 1.0, 20.0, 50.0)]]
    seg = SamSegmenter(tiny["segmenter"])
    batched = seg(images, boxes)
    for img, img_boxes, got in zip(images, boxes, batched):
        alone = seg([img], [img_boxes])[0]
        assert len(got) == len(img_boxes)
        for (mask, score), (ref_mask, ref_score) in zip(got, alone):
            assert mask.dtype == bool and mask.shape == (img.height, img.width)
            assert (mask == ref_mask).mean() > 0.99 and score == pytest.approx(ref_score, abs=1e-4)
    assert seg(images, [[], []]) == [[], []]


def test_llava_captions_are_the_greedy_reply(tiny):
    cap = LlavaCaptioner(tiny["captioner"], prompt=LLAVA_PROMPT, max_new_tokens=4)
    subject = _images()[0]
    got = cap([subject], ["ball"])
    model = T.LlavaForConditionalGeneration.from_pretrained(tiny["captioner"]).eval()
    proc = T.AutoProcessor.from_pretrained(tiny["captioner"])
    batch = proc(images=[subject], text=[LLAVA_PROMPT.format("ball")], return_tensors="pt")
    with torch.no_grad():
        tokens = model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert got == [proc.decode(tokens[0, batch["input_ids"].shape[1]:], skip_special_tokens=True).strip()]
    assert len(cap(_images(), ["ball", "kite"])) == 2 and cap([], []) == []
