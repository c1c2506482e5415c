"""Nothing a user does loses work silently: run-folder guards, resume checks, crash-safe rotation, config errors
before models load, and pre-emption under every launcher the README shows."""
from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from asuka.training.engine import fit
from asuka.training.run_dir import RunLayout
from asuka.training.run_dir import checkpoint as ckpt
from asuka.utils.errors import AsukaError, ConfigError

sys.path.insert(0, str(Path(__file__).parent))
from toy_stage import ToyStage, toy_config  # noqa: E402

HERE = Path(__file__).parent
REPO = HERE.parents[1]


def never_built(*args):
    raise AssertionError("a model was built before the config was refused")


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def steps_logged(run_dir: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


# ------------------------------------------------------------------------------------------- a run's own folder
def test_new_run_in_a_used_folder_is_refused_before_models(tmp_path):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    before = (tmp_path / "checkpoints/checkpoint-4/net/model.safetensors").read_bytes()
    with pytest.raises(ConfigError, match=r"already holds a run.*trainer.resume=latest.*trainer.overwrite=true"):
        fit(toy_config(max_steps=2), never_built, tmp_path)
    assert (tmp_path / "checkpoints/checkpoint-4/net/model.safetensors").read_bytes() == before
    assert steps_logged(tmp_path) == [1, 2, 3, 4]


def test_overwrite_replaces_the_old_run(tmp_path):
    fit(toy_config(max_steps=6), ToyStage, tmp_path)
    out = fit(toy_config(max_steps=2, overwrite=True), ToyStage, tmp_path)
    assert out["finished"]
    assert names(tmp_path / "checkpoints") == ["checkpoint-2"]
    assert steps_logged(tmp_path) == [1, 2]


def test_run_killed_before_its_first_checkpoint_keeps_its_log_aside(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 9.0}) + "\n")
    fit(toy_config(max_steps=2, resume="latest"), ToyStage, tmp_path)
    assert steps_logged(tmp_path) == [1, 2]
    stale = list(tmp_path.glob("metrics-*.jsonl"))
    assert len(stale) == 1 and json.loads(stale[0].read_text())["loss"] == 9.0


def test_unwritable_run_folder_is_one_line(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match=r"'hydra.run.dir'.*not writable"):
        fit(toy_config(), never_built, tmp_path / "file" / "run")


# ------------------------------------------------------------------------------------------------- resume
def test_changed_effective_batch_is_refused(tmp_path):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    with pytest.raises(ConfigError, match=r"effective batch 4 in the checkpoint, 2 now"):
        fit(toy_config(max_steps=6, resume="latest", batch_size=1), never_built, tmp_path)


def test_changed_effective_batch_resumes_with_warn(tmp_path, caplog):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    out = fit(toy_config(max_steps=6, resume="latest", batch_size=1, resume_mismatch="warn"), ToyStage, tmp_path)
    assert out["finished"] and "resume_mismatch=warn: resuming" in caplog.text


def test_changed_world_size_resumes_with_a_warning(tmp_path, caplog):
    fit(toy_config(max_steps=4), ToyStage, tmp_path)
    state_file = tmp_path / "checkpoints/checkpoint-4" / ckpt.STATE_FILE
    state = json.loads(state_file.read_text())
    state_file.write_text(json.dumps({**state, "world_size": 2}))  # as if made by 2 processes of batch 1
    out = fit(toy_config(max_steps=6, resume="latest"), ToyStage, tmp_path)
    assert out["finished"] and "2 process(es) in the checkpoint, 1 now" in caplog.text


def test_changed_model_is_refused_by_key(tmp_path):
    cfg = toy_config(max_steps=4)
    cfg.model = {"width": 8}
    fit(cfg, ToyStage, tmp_path)
    cfg.model.width = 16
    cfg.trainer.resume = "latest"
    with pytest.raises(ConfigError, match=r"model.width is 8 in checkpoint-4/config.yaml but 16 now"):
        fit(cfg, never_built, tmp_path)


def test_weights_of_another_shape_are_one_line(tmp_path):
    fit(toy_config(max_steps=2), ToyStage, tmp_path)

    class Wider(ToyStage):
        def __init__(self, *args):
            super().__init__(*args)
            import torch

            self.trainable["net"] = torch.nn.Linear(8, 8, bias=True).to(self.device)
            self.trainable["head"] = torch.nn.Linear(8, 2).to(self.device)

    with pytest.raises(AsukaError, match=r"head/model.safetensors: cannot be loaded into the model \(.*size mismatch"):
        fit(toy_config(max_steps=4, resume="latest"), Wider, tmp_path)


def test_tampered_checkpoint_file_is_one_line(tmp_path):
    fit(toy_config(max_steps=2), ToyStage, tmp_path)
    target = tmp_path / "checkpoints/checkpoint-2/optimizer_net.pt"
    target.write_bytes(pickle.dumps(os.system))  # a pickle that would run code when loaded unsafely
    with pytest.raises(AsukaError, match=r"optimizer_net.pt: cannot be read as a checkpoint file"):
        fit(toy_config(max_steps=4, resume="latest"), ToyStage, tmp_path)


def test_rollback_sets_newer_checkpoints_aside_and_latest_follows_the_new_branch(tmp_path):
    fit(toy_config(max_steps=6, keep_checkpoints=5), ToyStage, tmp_path)
    # a relative path resolves against the run folder
    out = fit(toy_config(max_steps=4, keep_checkpoints=5, resume="checkpoints/checkpoint-2"), ToyStage, tmp_path)
    assert out["finished"] and out["step"] == 4
    (aside,) = (tmp_path / "abandoned").iterdir()
    assert names(aside) == ["checkpoint-4", "checkpoint-6", "final", "metrics.jsonl"]
    assert [json.loads(x)["step"] for x in (aside / "metrics.jsonl").read_text().splitlines()] == [3, 4, 5, 6]
    assert steps_logged(tmp_path) == [1, 2, 3, 4]
    assert ckpt.resolve_resume("latest", RunLayout(tmp_path)).name == "checkpoint-4"
    assert json.loads((tmp_path / "checkpoints/checkpoint-4" / ckpt.STATE_FILE).read_text())["step"] == 4


# ------------------------------------------------------------------------------------------ crash-safe rotation
ROTATION_KILL = """
import sys, time, shutil
sys.path.insert(0, {tests!r})
from asuka.training.run_dir import checkpoint as ckpt
from asuka.training.engine import fit
from toy_stage import ToyStage, toy_config
real_rmtree = shutil.rmtree
def slow_rmtree(path, *a, **k):
    if ".trash-checkpoint-2" in str(path):
        (path / "trainer_state.json").unlink()  # part of the folder is gone...
        print("DELETING", flush=True)
        time.sleep(600)                          # ...when the kill comes
    real_rmtree(path, *a, **k)
ckpt.shutil.rmtree = slow_rmtree
fit(toy_config(max_steps=6), ToyStage, {run!r})
"""


def test_kill_during_rotation_leaves_no_half_checkpoint(tmp_path, caplog):
    run = tmp_path / "run"
    script = ROTATION_KILL.format(tests=str(HERE), run=str(run))
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        line, deadline = "", time.time() + 120
        while "DELETING" not in line and time.time() < deadline:
            line = proc.stdout.readline()
        assert "DELETING" in line, "the run never reached the rotation"
        proc.kill()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    found = names(run / "checkpoints")
    assert ".trash-checkpoint-2" in found
    assert all(ckpt.is_complete(run / "checkpoints" / n) for n in found if n.startswith(ckpt.PREFIX))
    out = fit(toy_config(max_steps=8, resume="latest"), ToyStage, run)
    assert out["finished"] and not any(n.startswith(".") for n in names(run / "checkpoints"))
    assert "incomplete" not in caplog.text


def test_old_half_deleted_checkpoint_is_removed_once(tmp_path, caplog):
    fit(toy_config(max_steps=4, keep_checkpoints=5), ToyStage, tmp_path)
    (tmp_path / "checkpoints/checkpoint-2" / ckpt.STATE_FILE).unlink()  # what the old rotation could leave
    fit(toy_config(max_steps=6, keep_checkpoints=5, resume="latest"), ToyStage, tmp_path)
    assert "removing incomplete checkpoint" in caplog.text and "checkpoint-2" in caplog.text
    assert names(tmp_path / "checkpoints") == ["checkpoint-4", "checkpoint-6"]


# ------------------------------------------------------------------------------------------ config mistakes
@pytest.mark.parametrize(
    "key, value, message",
    [
        ("optim.lr", -1, r"'optim.lr': must be > 0.0, got -1"),
        ("optim.lr", "fast", r"'optim.lr': must be a number, got 'fast'"),
        ("optim.name", "sgdd", r"'optim.name': unknown optimizer 'sgdd'"),
        ("optim.betas", [0.9, 1.5], r"'optim.betas': must be >= 0.0 and < 1.0, got 1.5"),
        ("trainer.mixed_precision", "bf17", r"'trainer.mixed_precision': must be no, fp16 or bf16, got 'bf17'"),
        ("trainer.num_workers", "many", r"'trainer.num_workers': must be an integer >= 0"),
    ],
)
def test_bad_values_fail_before_models(tmp_path, key, value, message):
    cfg = toy_config()
    node, leaf = key.split(".")
    cfg[node][leaf] = value
    with pytest.raises(ConfigError, match=message):
        fit(cfg, never_built, tmp_path)


def test_script_error_is_one_line_before_models(tmp_path):
    """Through the real entry script: exit 2, one line, no traceback (the MAE stage's own range check)."""
    cmd = [sys.executable, str(REPO / "scripts/train_mae.py"), "experiment=demo", "mae.keep_ratio=1.5",
           f"hydra.run.dir={tmp_path}"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1] == "error: config key 'mae.keep_ratio': must be > 0.0 and < 1.0, got 1.5"
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------ pre-emption
def launch_and_terminate(cmd: list[str], run: Path) -> None:
    """Start a launcher, SIGTERM only the launcher (as ``docker stop`` does to PID 1), wait for the trainer to end."""
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    run.mkdir()
    proc = subprocess.Popen(cmd + [str(HERE / "launcher_toy_main.py"), str(run)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 180
        while not (run / "pid").is_file() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert (run / "pid").is_file(), proc.stderr.read() if proc.poll() is not None else "training never started"
        trainer_pid = int((run / "pid").read_text())
        proc.send_signal(signal.SIGTERM)
        while time.time() < deadline:
            try:
                os.kill(trainer_pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            raise AssertionError("the training process is still running after its launcher got SIGTERM")
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    step, finished = (run / "exit.txt").read_text().split()
    assert finished == "False" and int(step) >= 2
    assert ckpt.is_complete(run / "checkpoints" / f"checkpoint-{step}")


def test_sigterm_to_accelerate_launch_single_process_checkpoints(tmp_path):
    accelerate = str(Path(sys.executable).parent / "accelerate")
    launch_and_terminate([accelerate, "launch", "--config_file", str(REPO / "configs/accelerate/1gpu.yaml")],
                         tmp_path / "run")


def test_sigterm_to_torchrun_checkpoints(tmp_path):
    launch_and_terminate([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1"],
                         tmp_path / "run")


# ------------------------------------------------------------------------------------------ one writer per folder
def test_a_second_process_cannot_write_a_run_folder_while_the_first_lives(tmp_path, caplog):
    """A real second process holds the folder's lock: this one is refused in one line naming it; once that process
    is SIGKILLed its stale lock is taken over with a warning."""
    import signal
    import subprocess
    import sys

    from asuka.training.run_dir.lock import acquire_run_lock

    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; "
         "from asuka.training.run_dir.lock import acquire_run_lock; acquire_run_lock(Path(sys.argv[1])); "
         "print('locked', flush=True); time.sleep(120)", str(tmp_path)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ConfigError, match=rf"being written by process {holder.pid} .*one run per folder"):
            fit(toy_config(max_steps=2), ToyStage, tmp_path)
        assert not (tmp_path / "checkpoints").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=30)
    out = fit(toy_config(max_steps=2), ToyStage, tmp_path)
    assert out["finished"] and "taking over the lock of a process that is gone" in caplog.text
    assert acquire_run_lock(tmp_path) == tmp_path / ".lock"  # this process holds it: re-entrant


def test_a_worker_dies_with_a_sigkilled_torchrun_during_start_up(tmp_path):
    """A real torchrun, SIGKILLed while its worker is still starting (it has imported asuka.utils.cli, as every
    entry script does first, and has not reached the training loop): the worker ends instead of hanging on."""
    import signal
    import subprocess
    import sys
    import time

    ready = tmp_path / "ready"
    worker = tmp_path / "worker.py"
    worker.write_text("import os, sys, time\nimport asuka.utils.cli  # noqa: F401\n"
                      f"open({str(ready)!r}, 'w').write(str(os.getpid()))\ntime.sleep(300)\n")
    launcher = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                 "1", str(worker)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ready.is_file() or not ready.read_text():
            assert time.monotonic() < deadline, "the worker never started"
            time.sleep(0.2)
        pid = int(ready.read_text())
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(timeout=30)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}").exists() and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]:
            assert time.monotonic() < deadline, "the orphaned worker is still running"
            time.sleep(0.2)
    finally:
        launcher.kill()


@pytest.mark.parametrize("damage", ["torn_state", "torn_config", "truncated_weights"])
def test_resume_latest_falls_back_past_a_damaged_checkpoint(tmp_path, caplog, damage):
    """The newest checkpoint torn (trainer_state.json, config.yaml) or its safetensors truncated: resume=latest
    continues from the one before, saying so, and ends exactly where a straight run ends; naming the damaged one
    explicitly is one line."""
    straight = fit(toy_config(max_steps=6, keep_checkpoints=5), ToyStage, tmp_path / "straight")
    run = tmp_path / "run"
    fit(toy_config(max_steps=6, keep_checkpoints=5), ToyStage, run)
    newest = run / "checkpoints/checkpoint-6"
    if damage == "torn_state":
        (newest / ckpt.STATE_FILE).write_text('{"step": 6, "dat')
    elif damage == "torn_config":
        (newest / "config.yaml").write_text("model: {width: [8,\n")
    else:
        weights = newest / "net/model.safetensors"
        weights.write_bytes(weights.read_bytes()[:-7])
    assert ckpt.resolve_resume("latest", RunLayout(run)).name == "checkpoint-4"
    assert "checkpoint-6 is damaged" in caplog.text
    with pytest.raises(AsukaError, match=r"checkpoint-6 is damaged"):
        ckpt.resolve_resume(str(newest), RunLayout(run))
    out = fit(toy_config(max_steps=6, keep_checkpoints=5, resume="latest"), ToyStage, run)
    assert out["finished"] and out["step"] == 6 and straight["step"] == 6
    assert sorted(p.name for p in next((run / "abandoned").iterdir()).iterdir())[0] == "checkpoint-6"  # kept aside
    a, b = (load_file(str(d / "final/net/model.safetensors")) for d in (tmp_path / "straight", run))
    assert all(torch.allclose(a[k], b[k], atol=1e-6, rtol=0) for k in a)


def test_a_full_disk_at_checkpoint_time_is_one_line_and_keeps_the_earlier_checkpoints(tmp_path, monkeypatch):
    """ENOSPC injected at a checkpoint file's write (a real full disk cannot be made here): one line naming the
    checkpoint, no partial folder left, the earlier checkpoint intact and resumable."""
    import errno

    real_save = ckpt.save_torch

    def full_disk(obj, path):
        if "checkpoint-4" in str(path) and path.name.startswith("optimizer"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, path)

    monkeypatch.setattr(ckpt, "save_torch", full_disk)
    with pytest.raises(AsukaError, match=r"checkpoint-4: cannot be written \(No space left on device\).*"
                                         r"trainer.resume=latest"):
        fit(toy_config(max_steps=6, keep_checkpoints=5), ToyStage, tmp_path)
    assert names(tmp_path / "checkpoints") == ["checkpoint-2"]
    monkeypatch.setattr(ckpt, "save_torch", real_save)
    assert fit(toy_config(max_steps=6, keep_checkpoints=5, resume="latest"), ToyStage, tmp_path)["step"] == 6


def test_wandb_online_without_a_login_is_one_line_before_any_model(tmp_path, monkeypatch):
    from asuka.training.validate import check_tracker_login

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc: no `wandb login`
    cfg = toy_config(max_steps=2)
    cfg.logger = {"tracker": "wandb", "mode": "online", "project": "asuka"}
    with pytest.raises(ConfigError, match=r"logger.mode.*no wandb login.*WANDB_MODE=offline"):
        fit(cfg, never_built, tmp_path / "run")
    assert not (tmp_path / "run" / "checkpoints").exists()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password k\n")
    (tmp_path / ".netrc").chmod(0o600)
    check_tracker_login(cfg)  # logged in: accepted
    cfg.logger.mode = "offline"
    (tmp_path / ".netrc").unlink()
    check_tracker_login(cfg)  # offline needs no login
