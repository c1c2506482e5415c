#!/usr/bin/env bash
# `make demo`: the whole ASUKA chain on tiny random models and the shipped samples, on CPU, offline.
# Every step is the command a user would run, with experiment=demo; results land in outputs/demo/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-outputs/demo}
rm -rf "$OUT"
mkdir -p "$OUT"
step() { echo; echo "== $*"; }

step "masks: the mixed generator"
$PY scripts/make_masks.py n=16 size=64 seed=0 out="$OUT/masks"
step "stage 1: MAE fine-tuning"
$PY scripts/train_mae.py experiment=demo hydra.run.dir="$OUT/mae"
step "stage 2: alignment module on the frozen (tiny) SD inpainting UNet"
$PY scripts/train_align.py experiment=demo hydra.run.dir="$OUT/align" paths.mae="$OUT/mae/final/mae"
step "stage 3: offline latent augmentation, then the mask-conditioned decoder"
$PY scripts/make_latent_aug.py experiment=demo hydra.run.dir="$OUT/latent_aug" paths.latent_cache="$OUT/latent_cache"
$PY scripts/train_decoder.py experiment=demo hydra.run.dir="$OUT/decoder" paths.latent_cache="$OUT/latent_cache"
step "export the pipeline and inpaint the samples"
$PY scripts/export_pipeline.py experiment=demo mae="$OUT/mae/final/mae" alignment="$OUT/align/final/alignment" \
    decoder="$OUT/decoder/final/decoder" out="$OUT/pipeline"
$PY scripts/inpaint.py experiment=demo pipeline="$OUT/pipeline" image_dir=data/samples mask_dir=data/samples/masks \
    out_dir="$OUT/inpainted" steps=10
step "evaluation (random-weight metrics: plumbing only)"
$PY scripts/eval.py experiment=demo method=asuka paths.pipeline="$OUT/pipeline" hydra.run.dir="$OUT/eval_asuka"
$PY scripts/eval.py experiment=demo method=sd hydra.run.dir="$OUT/eval_sd"
step "LAR-Gen: stage A (UNet + Assign), stage B (RefineNet), export with the ASUKA decoder, inpaint, evaluate"
$PY scripts/train_largen.py experiment=demo hydra.run.dir="$OUT/largen_assign" largen.val_inference_steps=5
$PY scripts/train_largen.py experiment=demo hydra.run.dir="$OUT/largen_refine" largen.stage=refine \
    largen.unet="$OUT/largen_assign/final/unet" largen.assign="$OUT/largen_assign/final/assign" largen.val_inference_steps=5
$PY scripts/export_pipeline.py experiment=demo method=largen largen.unet="$OUT/largen_assign/final/unet" \
    largen.assign="$OUT/largen_assign/final/assign" largen.refine="$OUT/largen_refine/final/refine" \
    largen.decoder="$OUT/decoder/final/decoder" out="$OUT/largen_pipeline"
$PY scripts/inpaint.py experiment=demo method=largen largen.pipeline="$OUT/largen_pipeline" image=data/samples/scene_00.png \
    mask=data/samples/masks/scene_00.png subject=data/largen_samples/shard_00000/0000000_00_subject.png \
    subject_mask=data/largen_samples/shard_00000/0000000_00_subject_mask.png prompt="a red ball" steps=10 \
    out="$OUT/largen_inpainted.png"
$PY scripts/eval.py experiment=demo method=largen dataset=largen_samples largen.pipeline="$OUT/largen_pipeline" \
    hydra.run.dir="$OUT/eval_largen"
step "LAR-Gen on tiny SDXL (the released model's backbone): export, evaluate"
$PY scripts/export_pipeline.py experiment=demo method=largen model=sdxl_tiny out="$OUT/largen_sdxl_pipeline"
$PY scripts/eval.py experiment=demo method=largen model=sdxl_tiny dataset=largen_samples \
    largen.pipeline="$OUT/largen_sdxl_pipeline" hydra.run.dir="$OUT/eval_largen_sdxl"
step "demo grid"
$PY -m asuka.demo "$OUT"
echo; echo "ASUKA (demo):"; cat "$OUT/eval_asuka/results.md"
echo; echo "SD baseline (demo):"; cat "$OUT/eval_sd/results.md"
echo; echo "LAR-Gen (demo):"; cat "$OUT/eval_largen/results.md"
echo; echo "LAR-Gen on tiny SDXL (demo):"; cat "$OUT/eval_largen_sdxl/results.md"
echo; echo "grid: $OUT/demo_grid.png"
