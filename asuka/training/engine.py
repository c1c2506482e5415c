"""The one training engine: an accelerate loop shared by the MAE, alignment and decoder stages.

A step is one optimizer update over ``trainer.grad_accum`` micro-batches. Steps are counted from 1 in logs and
checkpoint names (``checkpoint-<step>`` holds the state after ``step`` updates); ``Stage.training_step`` receives
the number of updates done before it (0-based).
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import DistributedDataParallelKwargs, gather_object, set_seed
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from asuka.data.device_images import decode_batch
from asuka.data.sampler import ResumableShardedSampler
from asuka.training.ema import EMA
from asuka.training.modules import unwrap
from asuka.training.optim import build_optimizer, build_scheduler, param_groups, resolve_lr
from asuka.training.reporting import init_trackers, log_image, make_grid
from asuka.training.run_dir import RunFolder, TrainingParts
from asuka.training.sharding import shard_frozen
from asuka.training.stage import Stage
from asuka.training.validate import check_tracker_login, validate_training_config
from asuka.utils.config_schema import validate_config
from asuka.utils.errors import AsukaError
from asuka.utils.process import SigtermFlag
from asuka.utils.workers import resolve_num_workers

log = logging.getLogger("asuka.train")

StageFactory = Callable[[DictConfig, torch.device, torch.dtype], Stage]
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_run_dir() -> Path:
    """The Hydra run folder (the same for every rank when launched through our configs)."""
    return Path(HydraConfig.get().runtime.output_dir)


class Trainer:
    """Holds the state of one run; ``fit`` drives it. Stages never see this class."""

    def __init__(self, cfg: DictConfig, stage_factory: StageFactory, run_dir: Path) -> None:
        self.cfg, self.tcfg, self.run_dir, self.folder = cfg, cfg.trainer, run_dir, RunFolder(run_dir)
        tracker = cfg.get("logger", {}).get("tracker")
        self.accelerator = Accelerator(
            cpu=bool(self.tcfg.cpu),
            mixed_precision=str(self.tcfg.mixed_precision),  # checked by config_schema in fit()
            log_with=tracker,
            project_dir=str(run_dir),
            kwargs_handlers=[
                DistributedDataParallelKwargs(find_unused_parameters=bool(self.tcfg.get("find_unused_parameters")))
            ],
        )
        acc = self.accelerator
        self.batch_size = validate_training_config(cfg, acc.num_processes)
        check_tracker_login(cfg)
        if acc.device.type == "cuda" and self.tcfg.get("tf32", True):  # Ampere and newer: TF32 matmuls/convs
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        self.effective_batch = self.batch_size * acc.num_processes * int(self.tcfg.grad_accum)
        getattr(stage_factory, "check_config", lambda _cfg: None)(cfg)
        self.resumed_from = self.folder.prepare(
            cfg, acc.num_processes, self.effective_batch, acc.is_main_process, acc.wait_for_everyone
        )

        set_seed(int(cfg.seed))  # identical initial weights on every rank
        self.stage = stage_factory(cfg, acc.device, DTYPES[str(self.tcfg.mixed_precision)])
        self.dataset = self.stage.train_dataset()
        self.sharded = shard_frozen(self.stage.frozen_modules(), acc) if self.tcfg.get("shard_frozen") else []
        self._build_optimizers()
        names = list(self.stage.trainable)
        prepared = acc.prepare(*self.stage.trainable.values(), *self.optimizers.values())
        prepared = prepared if isinstance(prepared, (list, tuple)) else [prepared]
        self.stage.trainable = dict(zip(names, prepared[: len(names)]))
        self.optimizers = dict(zip(self.optimizers, prepared[len(names) :]))
        self.ema = EMA(self.stage.trainable, float(self.tcfg.ema.decay)) if self.tcfg.ema.enabled else None

        self.step, self.bad_images, self.nonfinite_skipped, self.nonfinite_run = 0, 0, 0, 0
        self.bad_paths: set[str] = set()
        if self.resumed_from is not None:
            self._load(self.resumed_from)
        else:  # a different stream per rank for noise, timesteps and augmentations
            set_seed(int(np.random.SeedSequence([int(cfg.seed), acc.process_index]).generate_state(1)[0]))

    # ----------------------------------------------------------------------------------------------- building
    def _build_optimizers(self) -> None:
        self.optimizers, self.schedulers, self.peak_lrs = {}, {}, {}
        for spec in self.stage.optimizers():
            lr = resolve_lr(spec.cfg, self.effective_batch)
            modules = {name: self._trainable_part(name) for name in spec.modules}
            groups = param_groups(modules, float(spec.cfg.get("weight_decay", 0.0)), lr, spec.lr_scale)
            optimizer = build_optimizer(groups, spec.cfg)
            self.optimizers[spec.name] = optimizer
            self.schedulers[spec.name] = build_scheduler(optimizer, spec.cfg, int(self.tcfg.max_steps), lr)
            self.peak_lrs[spec.name] = lr

    def _trainable_part(self, name: str) -> torch.nn.Module:
        """``"unet"`` -> ``stage.trainable["unet"]``; ``"largen.unet"`` -> its submodule ``unet`` (a part of a composite
        module with its own lr_scale)."""
        root, _, sub = name.partition(".")
        module = self.stage.trainable[root]
        return module.get_submodule(sub) if sub else module

    def _dataloader(self) -> DataLoader:
        acc = self.accelerator
        consumed = self.step * int(self.tcfg.grad_accum) * self.batch_size
        sampler = ResumableShardedSampler(len(self.dataset), int(self.cfg.seed), acc.process_index, acc.num_processes)
        sampler.start_epoch, sampler.start_offset = sampler.position_after(consumed)
        workers = resolve_num_workers(self.tcfg.num_workers)
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=workers,
            collate_fn=getattr(self.dataset, "collate", None),
            pin_memory=acc.device.type == "cuda",
            persistent_workers=workers > 0,
            drop_last=True,
            # its own generator: creating the iterator must not draw from the (checkpointed) global RNG
            generator=torch.Generator().manual_seed(int(self.cfg.seed)),
        )

    # ------------------------------------------------------------------------------------------ checkpoints
    def _trainer_state(self) -> dict:
        return {
            "step": self.step,
            "bad_images": self.bad_images,
            "bad_paths": sorted(self.bad_paths),
            "nonfinite_skipped": self.nonfinite_skipped,
            "world_size": self.accelerator.num_processes,
            "effective_batch": self.effective_batch,
        }

    def _parts(self) -> TrainingParts:
        """What a checkpoint saves and restores."""
        ema = self.ema.modules if self.ema is not None else {}
        return TrainingParts(self.stage.trainable, ema, self.optimizers, self.schedulers, self.accelerator.scaler,
                             self.stage)

    def save_checkpoint(self) -> Path:
        """``checkpoint-<step>``, written atomically, then rotation to ``trainer.keep_checkpoints``."""
        return self.folder.save_checkpoint(self.step, self.accelerator, self._parts(), self._trainer_state(), self.cfg,
                                           int(self.tcfg.keep_checkpoints))

    def _load(self, path: Path) -> None:
        acc = self.accelerator
        state, had_rng = self.folder.load_checkpoint(path, self._parts(), acc.process_index)
        if not had_rng:
            log.warning("%s: no RNG state for rank %d (world size changed?); reseeding", path, acc.process_index)
            set_seed(int(self.cfg.seed) + self.step + acc.process_index)
        self.step = int(state["step"])
        self.bad_images = int(state.get("bad_images", 0))
        self.bad_paths = set(state.get("bad_paths", []))
        self.nonfinite_skipped = int(state.get("nonfinite_skipped", 0))
        log.info("resumed from %s at step %d", path, self.step)

    # ------------------------------------------------------------------------------------------------ steps
    def _no_sync(self, sync: bool) -> contextlib.ExitStack:
        stack = contextlib.ExitStack()
        if not sync:
            for module in self.stage.trainable.values():
                stack.enter_context(self.accelerator.no_sync(module))
        return stack

    def _to_device(self, batch: dict) -> dict:
        device = self.accelerator.device
        batch = {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        return decode_batch(batch) if "encoded" in batch else batch  # dataset.image_work=gpu: decoded here

    def train_step(self, batches, stop_requested: Callable[[], bool] = lambda: False) -> dict:  # noqa: ANN001
        """One optimizer update; a non-finite loss on any rank skips it everywhere. One all-reduce per step carries
        finiteness, the count of unreadable images and whether any rank has received SIGTERM by now (``logs["stop"]``)."""
        acc, accum = self.accelerator, int(self.tcfg.grad_accum)
        totals: dict[str, float] = {}
        losses: dict[str, torch.Tensor] = {}  # read back once, after the all-reduce: no GPU sync per micro-batch
        finite, bad = torch.ones((), device=acc.device), []
        for micro in range(accum):
            batch = next(batches)
            batch = self._to_device(batch)  # with image_work=gpu, files that fail to decode join "bad" here
            bad.extend(batch.pop("bad", None) or [])
            with self._no_sync(micro == accum - 1), acc.autocast():
                out = self.stage.training_step(batch, self.step)
                loss = sum(out.losses.values())
            finite = finite * torch.isfinite(loss.detach()).float()
            acc.backward(loss / accum)
            for key, value in {"loss": loss, **{f"loss_{k}": v for k, v in out.losses.items()}}.items():
                losses[key] = losses.get(key, 0.0) + value.detach().float() / accum
            for key, value in out.logs.items():
                if torch.is_tensor(value):  # a stage's tensor logs are read with the losses, once
                    losses[key] = losses.get(key, 0.0) + value.detach().float().to(acc.device) / accum
                else:
                    totals[key] = totals.get(key, 0.0) + float(value) / accum
        local = torch.stack([finite, *torch.tensor([len(bad), stop_requested()], dtype=torch.float, device=acc.device)])
        stats = acc.reduce(local, reduction="sum").tolist()
        totals.update(zip(losses, torch.stack(list(losses.values())).tolist()))
        all_finite = stats[0] >= acc.num_processes - 0.5
        if stats[1] > 0:
            self._record_bad(bad)
        if all_finite:
            for name, optimizer in self.optimizers.items():
                params = [p for group in optimizer.param_groups for p in group["params"]]
                if float(self.tcfg.max_grad_norm) > 0:
                    acc.clip_grad_norm_(params, float(self.tcfg.max_grad_norm))
                optimizer.step()
                self.schedulers[name].step()
            if self.ema is not None:
                self.ema.update(self.stage.trainable)
            self.nonfinite_run = 0
        else:
            self.nonfinite_skipped += 1
            self.nonfinite_run += 1
        for optimizer in self.optimizers.values():
            optimizer.zero_grad(set_to_none=True)
        totals["finite"] = float(all_finite)
        totals["stop"] = stats[2] > 0
        return totals

    def _record_bad(self, bad: list[str]) -> None:
        """Unreadable images the dataset skipped on any rank: counted, and each path logged once."""
        everywhere = gather_object(bad) if self.accelerator.num_processes > 1 else bad
        self.bad_images += len(everywhere)
        for path in sorted(set(everywhere) - self.bad_paths):
            log.warning("skipped unreadable image %s", path)
        self.bad_paths.update(everywhere)

    # ------------------------------------------------------------------------------------------- validation
    def validate(self) -> None:
        """Every rank runs the stage's validation forward (DDP needs that); the main process writes the grid and
        logs the stage's validation numbers (prefixed ``val_``) to metrics.jsonl and the trackers."""
        batch = self._to_device(self.dataset.collate([self.dataset[(0, i)] for i in range(self._n_val())]))
        with torch.no_grad(), self.accelerator.autocast():
            result = self.stage.validate(batch)
        logs = {f"val_{k}": float(v) for k, v in result.logs.items()}
        if logs:
            log.info("validation at step %d: %s", self.step, logs)
            self.accelerator.log(logs, step=self.step)
        if self.accelerator.is_main_process:
            if logs:
                self.folder.log_metrics({"step": self.step, **logs})
            grid = make_grid(result.rows)
            self.folder.save_val_grid(self.step, grid)
            log_image(self.accelerator, grid, self.step)

    def _n_val(self) -> int:
        return max(1, min(int(self.tcfg.get("val_images", 4)), len(self.dataset)))

    # ------------------------------------------------------------------------------------------------- run
    def start_run(self) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            self.folder.record_start(
                self.cfg,
                {
                    "stage": self.stage.name,
                    "world_size": acc.num_processes,
                    "ranks": list(range(acc.num_processes)),
                    "local_world_size": int(os.environ.get("LOCAL_WORLD_SIZE", 1)),
                    "device": str(acc.device),
                    "mixed_precision": str(self.tcfg.mixed_precision),
                    "per_device_batch": self.batch_size,
                    "grad_accum": int(self.tcfg.grad_accum),
                    "effective_batch": self.effective_batch,
                    "peak_lr": self.peak_lrs,
                    "sharded_frozen": self.sharded,  # FSDP2-sharded frozen modules (trainer.shard_frozen)
                    "resumed_from": str(self.resumed_from) if self.resumed_from else None,
                },
            )
        init_trackers(acc, self.cfg, str(self.run_dir))
        log.info(
            "%s: %d process(es), per-device batch %d x grad_accum %d = effective batch %d; peak lr %s",
            self.stage.name,
            acc.num_processes,
            self.batch_size,
            int(self.tcfg.grad_accum),
            self.effective_batch,
            self.peak_lrs,
        )

    def fit(self) -> dict:
        acc, tcfg = self.accelerator, self.tcfg
        self.start_run()
        max_steps = int(tcfg.max_steps)
        batches = iter(self._dataloader())
        bar = tqdm(total=max_steps, initial=self.step, disable=not acc.is_local_main_process, desc=self.stage.name)
        last_saved, logs = self.step if self.resumed_from else -1, {}
        tick, last_logged = time.perf_counter(), self.step
        with SigtermFlag() as sigterm:
            while self.step < max_steps:
                logs = self.train_step(batches, lambda: sigterm.received)
                stop = logs.pop("stop")
                self.step += 1
                bar.update(1)
                logs.update(
                    step=self.step,
                    lr=self.schedulers[next(iter(self.schedulers))].get_last_lr()[0],
                    bad_images=self.bad_images,
                    bad_unique=len(self.bad_paths),
                    nonfinite_skipped=self.nonfinite_skipped,
                )
                if self.step % int(tcfg.log_every) == 0 or self.step == max_steps or not logs["finite"]:
                    logs["sec_per_step"] = (time.perf_counter() - tick) / (self.step - last_logged)
                    tick, last_logged = time.perf_counter(), self.step
                    if acc.is_main_process:
                        self.folder.log_metrics(logs)
                    acc.log({k: v for k, v in logs.items() if k != "step"}, step=self.step)
                    bar.set_postfix(loss=f"{logs['loss']:.4g}")
                self._check_health()
                if self.step % int(tcfg.val_every) == 0:
                    self.validate()
                if self.step % int(tcfg.checkpoint_every) == 0:
                    if self.nonfinite_run:  # do not rotate a good checkpoint away for one taken in a bad patch
                        log.warning("step %d: checkpoint postponed after a non-finite loss", self.step)
                    else:
                        self.save_checkpoint()
                        last_saved = self.step
                if stop:
                    log.warning("SIGTERM: checkpointing at step %d and exiting", self.step)
                    break
        bar.close()
        if last_saved != self.step:
            self.save_checkpoint()
        finished = self.step >= max_steps
        if finished:
            if self.step % int(tcfg.val_every) != 0:
                self.validate()
            self.save_final()
        acc.end_training()
        return {"step": self.step, "finished": finished, "run_dir": str(self.run_dir), **logs}

    def _check_health(self) -> None:
        tcfg = self.tcfg
        if self.nonfinite_run >= int(tcfg.nonfinite_patience):
            raise AsukaError(
                f"{self.nonfinite_run} non-finite losses in a row at step {self.step} "
                f"(trainer.nonfinite_patience={tcfg.nonfinite_patience}); last good checkpoint: "
                f"{self.folder.last_checkpoint() or 'none'}"
            )
        if len(self.bad_paths) > float(tcfg.max_bad_fraction) * len(self.dataset):
            raise AsukaError(
                f"{len(self.bad_paths)} of {len(self.dataset)} images are unreadable, more than "
                f"trainer.max_bad_fraction={tcfg.max_bad_fraction}; first: {sorted(self.bad_paths)[0]}"
            )

    def save_final(self) -> None:
        """``final/<name>/`` in save_pretrained format (the EMA weights when EMA is on)."""
        if not self.accelerator.is_main_process:
            return
        ema = self.ema.modules if self.ema is not None else {}
        modules = self.stage.final_modules()
        self.folder.save_final({name: ema[name] if name in ema else unwrap(module) for name, module in modules.items()})


def fit(cfg: DictConfig, stage_factory: StageFactory, run_dir: str | Path | None = None) -> dict:
    """Train a stage as configured and return the last logged values (and ``run_dir``)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    run_dir = Path(run_dir) if run_dir is not None else default_run_dir()
    validate_config(cfg)  # the scripts check it in asuka.utils.cli.run; fit() called from Python checks it here
    return Trainer(cfg, stage_factory, run_dir).fit()
