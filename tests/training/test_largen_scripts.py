"""``scripts/train_largen.py``: stage A then stage B from stage A's outputs, as a user runs them; stage B on SDXL
through export and ``inpaint.py``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from conftest import REPO, compose_config  # noqa: E402

# the scripts import this checkout's package (not whichever one the interpreter has installed)
ENV = {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}


def test_train_largen_script_runs_both_stages(tmp_path):
    common = ["experiment=demo", "trainer.max_steps=2", "trainer.val_every=2", "largen.val_inference_steps=2",
              "trainer.val_images=2"]
    a, b = tmp_path / "a", tmp_path / "b"
    for run, extra in ((a, []), (b, ["largen.stage=refine", f"largen.unet={a}/final/unet",
                                    f"largen.assign={a}/final/assign"])):
        proc = subprocess.run([sys.executable, str(REPO / "scripts/train_largen.py"), *common, *extra,
                               f"hydra.run.dir={run}"], env=ENV, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert (b / "final/refine/config.json").is_file() and (b / "val/step_0000002.png").is_file()
    grid = np.asarray(Image.open(b / "val/step_0000002.png"))
    assert grid.shape == (6 * 64, 2 * 64, 3)  # rows: scene, masked scene, subject, prompt, output at lambda 1 and 0.5


def test_sdxl_stage_b_script_exports_and_inpaints_with_its_refinenet(tmp_path):
    """SDXL stage B (ours: no SDXL RefineNet was released): ``train_largen.py model=sdxl_tiny largen.stage=refine``,
    the exported folder loads with that RefineNet, and ``inpaint.py`` on it uses it (subject task)."""
    from safetensors.torch import load_file

    from asuka.pipelines.largen_build import export_largen_pipeline, load_largen_pipeline
    from asuka.pipelines.pipeline_largen import LarGenInpaintPipeline

    run, folder = tmp_path / "b", tmp_path / "pipe"
    proc = subprocess.run([sys.executable, str(REPO / "scripts/train_largen.py"), "experiment=demo", "model=sdxl_tiny",
                           "largen.stage=refine", "trainer.max_steps=2", "trainer.val_every=2",
                           "largen.val_inference_steps=2", "trainer.val_images=2", f"hydra.run.dir={run}"],
                          env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert np.asarray(Image.open(run / "val/step_0000002.png")).shape == (6 * 64, 2 * 64, 3)
    export_largen_pipeline(compose_config("export_pipeline", ["experiment=demo", "method=largen", "model=sdxl_tiny",
                                                              f"largen.refine={run}/final/refine", f"out={folder}"]))
    pipe = load_largen_pipeline(folder)
    pipe.set_progress_bar_config(disable=True)
    trained, loaded = load_file(str(next((run / "final/refine").glob("*.safetensors")))), pipe.refine.state_dict()
    assert trained.keys() == loaded.keys() and all(torch.equal(trained[k], loaded[k]) for k in trained)
    assert pipe.refine.unet.config.addition_embed_type == "text_time" and pipe.text_encoder_2 is not None

    rng = np.random.default_rng(0)
    scene = Image.fromarray(rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    mask = np.zeros((64, 96), bool)
    mask[20:44, 40:70] = True
    subject = np.full((40, 30, 3), 255, np.uint8)
    subject[5:35, 5:25] = (200, 30, 30)
    scene.save(tmp_path / "scene.png")
    Image.fromarray(mask.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    Image.fromarray(subject).save(tmp_path / "subject.png")
    proc = subprocess.run([sys.executable, str(REPO / "scripts/inpaint.py"), "method=largen", "model=sdxl_tiny",
                           f"pipeline={folder}", f"image={tmp_path / 'scene.png'}", f"mask={tmp_path / 'mask.png'}",
                           f"subject={tmp_path / 'subject.png'}", "steps=2", f"out={tmp_path / 'out.png'}",
                           f"hydra.run.dir={tmp_path / 'h'}"], env=ENV, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = np.asarray(Image.open(tmp_path / "out.png")).astype(np.float64)[mask]
    hole = Image.fromarray(mask.astype(np.uint8) * 255)
    call = lambda p: p(scene, hole, subject_image=Image.fromarray(subject), num_inference_steps=2,  # noqa: E731
                       generator=torch.Generator().manual_seed(0), output_type="np").images[0]
    with_refine = call(pipe)[mask] * 255
    without = call(LarGenInpaintPipeline(**{**pipe.components, "refine": None}))[mask] * 255
    assert np.abs(got - with_refine).max() <= 2  # the script's result is the pipeline's with its RefineNet ...
    assert np.abs(got - without).mean() > 10 * max(np.abs(got - with_refine).mean(), 0.1)  # ... not without it
