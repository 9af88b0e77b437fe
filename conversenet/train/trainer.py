"""The training loop: exact resume, atomic checkpoints, validation, logging and DDP.

Run it with :func:`train` (what ``conversenet train`` calls) or build a :class:`Trainer`.
Under ``torchrun`` (``WORLD_SIZE`` > 1 in the environment) it uses
DistributedDataParallel (gloo on CPU, nccl on GPU); each rank gets ``batch_size /
world_size`` samples of the same global batch a single process would use, and only rank
0 logs, validates and writes files.

Outputs in the run folder: ``config.yaml`` (the resolved config), ``last.pth`` and
``best.pth`` (full training state), ``metrics.csv``, ``curves.png``, optionally ``tb/``.

The model is built from a registry name only (:func:`build_model`); a config cannot import
or call code. Models of your own are added with :func:`conversenet.models.register_model`
from Python code you run (``conversenet train --import MODULE``).

Example (a registry model shrunk to a tiny width):
    >>> import tempfile, pathlib, numpy as np
    >>> from PIL import Image
    >>> from conversenet.train import config_from_dict, Trainer
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> (d / "imgs").mkdir()
    >>> for i in range(2):
    ...     Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24), np.uint8)).save(d / "imgs" / f"{i}.png")
    >>> cfg = config_from_dict({"name": "t",
    ...     "model": {"name": "converse_dncnn", "args": {"width": 4, "num_blocks": 1}},
    ...     "data": {"train": str(d / "imgs"), "val": str(d / "imgs"), "patch_size": 16, "batch_size": 2,
    ...              "num_workers": 0},
    ...     "train": {"total_iter": 2, "val_every": 2, "checkpoint_every": 2, "log_every": 1},
    ...     "log": {"progress": False, "plot": False}})
    >>> Trainer(cfg, out_dir=d / "run", verbose=False).run()
    0
    >>> sorted(p.name for p in (d / "run").iterdir())
    ['best.pth', 'config.yaml', 'last.pth', 'metrics.csv']
"""

from __future__ import annotations

import copy
import csv
import math
import os
import signal
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional, Union

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import yaml
from torch.utils.data import DataLoader

from . import _ops
from .._atomic import WriteError, atomic_open, check_writable_dir, file_mode
from ..inference import run_model
from ..models.base import as_restoration_model
from ..tasks import get_task
from .checkpoint import FORMAT as CKPT_FORMAT
from .checkpoint import VERSION as CKPT_VERSION
from .checkpoint import CheckpointError, load_checkpoint, plain_state_dict, rng_state, save_atomic, set_rng_state, write_text_atomic
from .config import Config, ConfigError, check_model_name, config_to_dict
from .data import (IterationBatchSampler, TrainPatches, ValImages, collate, resolve_folder,
                   worker_init)

__all__ = ["Trainer", "train", "build_model", "check_model_name", "EMA", "curves_figure", "plot_curves"]

CSV_FIELDS = ["iter", "lr", "loss", "psnr", "it_per_s", "elapsed_s"]


def build_model(cfg: Config, pretrained: bool = True) -> nn.Module:
    """Instantiate ``cfg.model`` from the model registry; errors name the key.

    ``model.args.pretrained`` (``"builtin"``, ``"official"`` or a weights file, loaded
    weights-only) starts a new run from those weights (fine-tuning); ``pretrained=False``
    leaves it out: a resumed run takes its weights from the checkpoint, so the file need not
    exist any more (a new machine).

    Only registered names are built (the package's models, and those registered with
    :func:`conversenet.models.register_model` by code the user runs, e.g.
    ``conversenet train --import MODULE``). A config never names a module or function to
    import: anything else, ``module:factory`` included, is refused before anything is imported.
    """
    from ..models import WeightsError, create

    name, args = cfg.model.name, dict(cfg.model.args)
    check_model_name(name)
    if not pretrained:
        args.pop("pretrained", None)
    try:
        model = create(name, **args)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"model.args: {name} rejected {args}: {e}") from None
    except WeightsError as e:
        raise ConfigError(f"model.args: {e}") from None
    task = as_restoration_model(model).task
    if task not in ("denoise", "sr", "deblur"):
        raise ConfigError(f"model.name: {name} has no valid 'task' attribute (got {task!r})")
    return model


def model_info(model: nn.Module) -> Dict[str, Any]:
    m = as_restoration_model(model)
    return {"task": m.task, "in_channels": int(m.in_channels), "scale": int(m.scale),
            "needs_kernel": bool(m.takes_kernel)}


# --------------------------------------------------------------------------- EMA

class EMA:
    """Exponential moving average of a model's parameters (buffers are copied)."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for e, p in zip(self.model.parameters(), model.parameters()):
            e.mul_(self.decay).add_(p.detach(), alpha=1 - self.decay)
        for e, b in zip(self.model.buffers(), model.buffers()):
            e.copy_(b)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return self.model.state_dict()

    def load_state_dict(self, sd: Dict[str, torch.Tensor]) -> None:
        self.model.load_state_dict(sd)


def _psnr_loss(out: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """Mean over the batch of ``10 log10(MSE)`` per sample (N, C, H, W): minus the mean
    PSNR up to a constant. Unlike L2 it does not let the noisiest patches dominate: each
    sample's gradient is divided by its own MSE, as the PSNR averaged over images weighs
    them. The 1e-10 floor keeps log finite on an exact match."""
    mse = (out - gt).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(mse + 1e-10).mean()


def _loss_fn(name: str):
    if name == "l1":
        return F.l1_loss
    if name == "l2":
        return F.mse_loss
    if name == "psnr":
        return _psnr_loss
    return lambda a, b: torch.sqrt((a - b) ** 2 + 1e-6).mean()


# --------------------------------------------------------------------------- trainer

def curves_figure(metrics: Union[str, Path], title: str = "", loss_label: str = "training loss",
                  val_label: str = "validation"):
    """A matplotlib figure of a run's ``metrics.csv``: training loss (left) and validation
    PSNR in dB (right) against the iteration. Raises ImportError without matplotlib; the
    caller closes the figure (``matplotlib.pyplot.close(fig)``)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics, newline="") as f:
        rows = list(csv.DictReader(f))
    lo = [(int(r["iter"]), float(r["loss"])) for r in rows if r["loss"]]
    ps = [(int(r["iter"]), float(r["psnr"])) for r in rows if r["psnr"]]
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if lo:
        axes[0].plot(*zip(*lo))
    axes[0].set(xlabel="iteration", ylabel=loss_label, title=title)
    if ps:
        axes[1].plot(*zip(*ps), marker="o")
    axes[1].set(xlabel="iteration", ylabel="validation PSNR (dB)", title=val_label)
    for a in axes:
        a.grid(alpha=0.3)
    # late fine-tuning moves the PSNR by thousandths of a dB: without this matplotlib labels
    # the axis "+2.926e1" and 0.003, 0.004 ..., which nobody reads as dB
    axes[1].ticklabel_format(axis="y", useOffset=False, style="plain")
    fig.tight_layout()
    return fig


def plot_curves(metrics: Union[str, Path], out: Union[str, Path], title: str = "",
                loss_label: str = "training loss", val_label: str = "validation") -> bool:
    """Draws a run's ``metrics.csv`` (:func:`curves_figure`) into the PNG ``out`` (written
    atomically). Returns False when matplotlib is not installed (nothing written).

    The trainer calls it at the end of a run; for a run stopped early::

        plot_curves("runs/x/metrics.csv", "runs/x/curves.png", "x")
    """
    try:
        fig = curves_figure(metrics, title, loss_label, val_label)
    except ImportError:
        return False
    import matplotlib.pyplot as plt

    try:
        with atomic_open(out, "wb") as f:
            fig.savefig(f, format="png", dpi=110)
    finally:
        plt.close(fig)
    return True


class Trainer:
    """One training run.

    Args:
        cfg: a validated :class:`~conversenet.train.config.Config`.
        out_dir: run folder (default ``cfg.out_dir`` or ``runs/<name>``).
        resume: False (fresh run), True (resume ``out_dir/last.pth``) or a checkpoint path.
        overwrite: allow a fresh run in a folder that already holds a checkpoint.
        verbose: print notices (rank 0 only in any case).
    """

    def __init__(self, cfg: Config, out_dir: Union[str, Path, None] = None,
                 resume: Union[bool, str, Path] = False, overwrite: bool = False, verbose: bool = True) -> None:
        self.cfg = cfg
        self.out = Path(out_dir or cfg.out_dir or Path("runs") / cfg.name)
        self.resume, self.overwrite, self.verbose = resume, overwrite, verbose
        self._stop_signal: Optional[int] = None
        self.rank, self.world, self.local_rank = 0, 1, 0
        env_world = int(os.environ.get("WORLD_SIZE", "1"))
        self.distributed = env_world > 1
        if self.distributed:
            self.rank, self.world = int(os.environ["RANK"]), env_world
            self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if cfg.data.batch_size % self.world:
            raise ConfigError(f"data.batch_size: {cfg.data.batch_size} is not divisible by the "
                              f"{self.world} processes")
        self._check_out_dir()

    # ---------------------------------------------------------------- helpers
    def _say(self, msg: str) -> None:
        if self.rank == 0 and self.verbose:
            print(msg, file=sys.stderr, flush=True)

    def _check_out_dir(self) -> None:
        last = self.out / "last.pth"
        if self.resume:
            path = last if self.resume is True else Path(self.resume)
            if not path.is_file():
                raise FileNotFoundError(f"--resume: no checkpoint at {path}")
            self.resume_path: Optional[Path] = path
        else:
            self.resume_path = None
            if last.exists() and not self.overwrite:
                raise FileExistsError(f"{self.out} already holds a checkpoint: use --resume to continue it, "
                                      f"--overwrite to start again, or --out DIR")
        if self.rank == 0:  # a read-only place fails now, in one line, not at the first checkpoint
            check_writable_dir(self.out, "run folder")

    def _device(self) -> torch.device:
        d = self.cfg.device
        if d == "auto":
            d = f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu"
        elif d == "cuda" and self.distributed:
            d = f"cuda:{self.local_rank}"
        dev = torch.device(d)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ConfigError(f"device: {d} requested but CUDA is not available")
        return dev

    def _handle_signal(self, signum, frame) -> None:  # noqa: ARG002
        if self._stop_signal is not None:  # second signal: stop right away
            raise KeyboardInterrupt
        self._stop_signal = signum
        self._say(f"\n{signal.Signals(signum).name}: saving a checkpoint after this iteration "
                  "(send again to abort without saving)")

    def _all_reduce(self, t: torch.Tensor, op=None) -> torch.Tensor:
        if self.distributed:
            dist.all_reduce(t, op=op or dist.ReduceOp.SUM)
        return t

    def _barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    # ---------------------------------------------------------------- setup
    def _setup(self) -> None:
        cfg = self.cfg
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.device = self._device()
        if self.distributed and not dist.is_initialized():
            backend = "nccl" if self.device.type == "cuda" else "gloo"
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group(backend=backend)
        torch.manual_seed(cfg.seed)
        import random

        import numpy as np
        random.seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)

        # a resumed run takes its weights from the checkpoint, not from model.args.pretrained
        self.model = build_model(cfg, pretrained=self.resume_path is None).to(self.device)
        self.info = model_info(self.model)
        # the model contract of the trained network (a user's module: wrapped once, here)
        self.contract = as_restoration_model(self.model)
        task = self.info["task"]
        if get_task(task).scaled and self.info["scale"] != cfg.degradation.scale:
            raise ConfigError(f"degradation.scale: {cfg.degradation.scale} but the model upscales by "
                              f"{self.info['scale']}")
        self.net: nn.Module = self.model
        if self.distributed:
            self.net = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        t = cfg.train
        self.opt = torch.optim.Adam(self.model.parameters(), lr=t.lr, betas=tuple(t.betas),
                                    weight_decay=t.weight_decay)
        self.sched = torch.optim.lr_scheduler.MultiStepLR(self.opt, milestones=list(t.milestones), gamma=t.gamma)
        self.ema = EMA(self.model, t.ema_decay) if t.ema_decay > 0 else None
        self.loss_fn = _loss_fn(t.loss)

        ch = self.info["in_channels"]
        self.train_set = TrainPatches(resolve_folder(cfg.data.train, "data.train"), task, cfg.degradation, ch,
                                      cfg.data.patch_size, cfg.seed, cfg.data.augment, cfg.data.cache)
        self.val_set = None
        if cfg.data.val:
            kernel = None
            if get_task(task).uses_kernel and cfg.degradation.val_kernel:
                kernel = _ops.load_kernel(_resolve_file(cfg.degradation.val_kernel, "degradation.val_kernel"))
            self.val_set = ValImages(resolve_folder(cfg.data.val, "data.val"), task, cfg.degradation, ch,
                                     cfg.data.val_images, cfg.data.val_crop, seed=0, kernel=kernel)

        self.iteration, self.best_psnr, self.best_iter = 0, -math.inf, 0
        if self.resume_path is not None:
            self._load(self.resume_path)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            _remove_stale_temps(self.out)
            write_text_atomic(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), self.out / "config.yaml")
            self._init_csv()
        self._barrier()

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.opt.load_state_dict(ckpt["optimizer"])
            self.sched.load_state_dict(ckpt["scheduler"])
            fresh_ema = self.ema is not None and ckpt.get("ema") is None
            if fresh_ema:
                # EMA switched on for a run that had none: it averages from the resumed weights on
                self.ema = EMA(self.model, self.cfg.train.ema_decay)
            elif self.ema is not None:
                self.ema.load_state_dict(ckpt["ema"])
            set_rng_state(ckpt["rng"])
        except CheckpointError:
            raise
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            # a checkpoint of another model or config, or a damaged one: say so in one line
            first = " ".join(str(e).split()) or type(e).__name__
            first = first if len(first) <= 300 else first[:300] + " ..."
            raise CheckpointError(f"{path}: cannot resume the configured model {self.cfg.model.name!r} from "
                                  f"this checkpoint (model {ckpt.get('model_name')!r}): {first}") from None
        self.iteration = int(ckpt["iteration"])
        self.best_psnr, self.best_iter = float(ckpt.get("best_psnr", -math.inf)), int(ckpt.get("best_iter", 0))
        if fresh_ema:
            self._say(f"notice: EMA (decay {self.cfg.train.ema_decay}) starts at iteration {self.iteration} "
                      f"from the resumed weights")
        if _apply_schedule(self.sched, self.cfg.train, self.iteration):
            lrs = sorted({g["lr"] for g in self.opt.param_groups})
            self._say(f"notice: the configured schedule (lr {self.cfg.train.lr}, milestones "
                      f"{list(self.cfg.train.milestones)}, gamma {self.cfg.train.gamma}) replaces the "
                      f"checkpoint's from iteration {self.iteration}: lr now {', '.join(f'{v:g}' for v in lrs)}")
        old = ckpt.get("config", {})
        new = config_to_dict(self.cfg)
        diff = _diff_keys(old, new)
        if diff:
            self._say(f"notice: config differs from the checkpoint's in: {', '.join(diff)}")
        self._say(f"resumed from {path} at iteration {self.iteration}")

    def _checkpoint(self) -> Dict[str, Any]:
        return {
            "format": CKPT_FORMAT, "version": CKPT_VERSION,
            "iteration": self.iteration,
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "rng": rng_state(),
            "best_psnr": self.best_psnr, "best_iter": self.best_iter,
            "config": config_to_dict(self.cfg),
            "model_name": self.cfg.model.name, "model_args": dict(self.cfg.model.args),
            "world_size": self.world,
        }

    def _snapshot(self) -> None:
        """Weights only (the EMA's when the run keeps one), as ``--export`` writes them:
        ``snapshots/iter_NNNNNNN.pth``. Lets runs be compared at equal iterations."""
        if self.rank != 0:
            return
        state = plain_state_dict(self.ema.state_dict() if self.ema is not None else self.model.state_dict())
        folder = self.out / "snapshots"
        folder.mkdir(parents=True, exist_ok=True)
        save_atomic(state, folder / f"iter_{self.iteration:07d}.pth")

    def _save(self, best: bool = False) -> None:
        if self.rank != 0:
            return
        ck = self._checkpoint()
        save_atomic(ck, self.out / "last.pth")
        if best:
            save_atomic(ck, self.out / "best.pth")

    # ---------------------------------------------------------------- logging
    def _init_csv(self) -> None:
        path = self.out / "metrics.csv"
        rows: List[Dict[str, str]] = []
        if self.resume_path is not None and path.exists():
            with open(path, newline="") as f:
                rows = [r for r in csv.DictReader(f) if r.get("iter") and int(r["iter"]) <= self.iteration]
        lines = [",".join(CSV_FIELDS)] + [",".join(r.get(k, "") or "" for k in CSV_FIELDS) for r in rows]
        write_text_atomic("\n".join(lines) + "\n", path)

    def _log_row(self, **row: Any) -> None:
        if self.rank != 0:
            return
        # appended in place (one row per log step); O_NOFOLLOW: never through a planted link
        try:
            fd = os.open(self.out / "metrics.csv", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW,
                         file_mode())
        except OSError as e:
            raise WriteError(self.out / "metrics.csv", e) from None
        with os.fdopen(fd, "a", newline="") as f:
            csv.writer(f).writerow(["" if row.get(k) is None else _fmt(row[k]) for k in CSV_FIELDS])
        if self.tb is not None:
            for k in ("loss", "psnr", "lr", "it_per_s"):
                if row.get(k) is not None:
                    self.tb.add_scalar(f"train/{k}" if k != "psnr" else "val/psnr", row[k], row["iter"])

    def _open_tb(self):
        if self.rank != 0 or not self.cfg.log.tensorboard:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            self._say("notice: log.tensorboard is on but the tensorboard package is missing; skipping it")
            return None
        return SummaryWriter(str(self.out / "tb"))

    def _plot(self) -> None:
        if self.rank != 0 or not self.cfg.log.plot:
            return
        if not plot_curves(self.out / "metrics.csv", self.out / "curves.png", self.cfg.name,
                           f"training loss ({self.cfg.train.loss})", str(self.cfg.data.val)):
            self._say("notice: matplotlib is not installed (pip install 'conversenet[plot]'); no curves.png")

    # ---------------------------------------------------------------- steps
    def _forward(self, net: nn.Module, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        lq = batch["lq"].to(self.device, non_blocking=True)
        k = batch["kernel"].to(self.device, non_blocking=True) if self.contract.takes_kernel else None
        return net(*self.contract.inputs(lq, k))

    @torch.no_grad()
    def validate(self) -> float:
        """Average PSNR (dB, 8-bit) on the validation images (rank 0)."""
        assert self.val_set is not None
        model = self.ema.model if self.ema is not None else self.model
        was_training = model.training
        model.eval()
        t = get_task(self.info["task"])
        border = self.info["scale"] if t.scaled else 0  # SR: the scale's border, as the protocol
        y = t.test_y and self.info["in_channels"] == 3
        vals = []
        for k in range(len(self.val_set)):
            s = self.val_set[k]
            lq = s["lq"].unsqueeze(0).to(self.device)
            kern = s["kernel"].unsqueeze(0).to(self.device) if self.contract.takes_kernel else None
            # the one inference path (whole image: validation images are small)
            out = run_model(model, lq, kern, tile=0)[0]
            vals.append(_ops.psnr(out, s["gt"], crop_border=border, y_channel=y))
        model.train(was_training)
        return float(sum(vals) / len(vals))

    def _dump_grads(self, step: int, loss: torch.Tensor) -> None:
        grads = {n: p.grad.detach().cpu().clone() for n, p in self.model.named_parameters() if p.grad is not None}
        save_atomic({"step": step, "loss": float(loss), "world_size": self.world, "grads": grads},
                    self.out / f"grads_step{step}.pt")

    def run(self) -> int:
        """Train until ``train.total_iter``; 0 when finished, 130 / 143 when stopped by SIGINT /
        SIGTERM (after saving ``last.pth``). ``threads`` holds for the run only: the
        caller's torch thread count is put back afterwards."""
        threads = torch.get_num_threads()
        try:
            return self._run()
        finally:
            torch.set_num_threads(threads)

    def _run(self) -> int:
        self._setup()
        cfg, t = self.cfg, self.cfg.train
        self.tb = self._open_tb()
        sampler = IterationBatchSampler(self.iteration, t.total_iter, cfg.data.batch_size, self.rank, self.world)
        loader = DataLoader(self.train_set, batch_sampler=sampler, num_workers=cfg.data.num_workers,
                            collate_fn=collate, worker_init_fn=worker_init,
                            pin_memory=self.device.type == "cuda",
                            persistent_workers=False)
        old_handlers = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                old_handlers[sig] = signal.signal(sig, self._handle_signal)
            except ValueError:  # not the main thread
                pass
        bar = None
        if self.rank == 0 and cfg.log.progress and self.iteration < t.total_iter:
            from tqdm import tqdm
            bar = tqdm(total=t.total_iter, initial=self.iteration, desc=cfg.name, dynamic_ncols=True,
                       mininterval=1.0, file=sys.stderr)
        self._say(f"training {cfg.model.name} ({self.info['task']}) on {self.device}, {self.world} process(es), "
                  f"global batch {cfg.data.batch_size}, iterations {self.iteration}->{t.total_iter}, out {self.out}")
        self.net.train()
        t0 = time.perf_counter()
        win_t, win_n, win_loss = time.perf_counter(), 0, 0.0
        last_psnr: Optional[float] = None
        last_loss: Optional[float] = None
        stopped = False
        try:
            for batch in loader:
                it = self.iteration + 1
                gt = batch["gt"].to(self.device, non_blocking=True)
                out = self._forward(self.net, batch)
                loss = self.loss_fn(out, gt)
                self.opt.zero_grad(set_to_none=True)
                loss.backward()
                if cfg.debug.dump_grads_at_step == it:
                    gl = self._all_reduce(loss.detach().clone()) / self.world
                    if self.rank == 0:
                        self.out.mkdir(parents=True, exist_ok=True)
                        self._dump_grads(it, gl)
                if t.grad_clip > 0:
                    nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
                self.opt.step()
                self.sched.step()
                if self.ema is not None:
                    self.ema.update(self.model)
                self.iteration = it
                if cfg.debug.iter_sleep_s:
                    time.sleep(cfg.debug.iter_sleep_s)
                win_loss += float(loss.detach())
                win_n += 1
                if bar is not None:
                    bar.update(1)

                if it % t.log_every == 0 or it == t.total_iter:
                    mean = self._all_reduce(torch.tensor([win_loss / win_n], dtype=torch.float64)) / self.world
                    ips = win_n / max(time.perf_counter() - win_t, 1e-9)
                    self._log_row(iter=it, lr=self.opt.param_groups[0]["lr"], loss=float(mean), it_per_s=ips,
                                  elapsed_s=time.perf_counter() - t0)
                    last_loss = float(mean)
                    if bar is not None:
                        bar.set_postfix(loss=f"{last_loss:.4f}",
                                        psnr="-" if last_psnr is None else f"{last_psnr:.2f}", refresh=False)
                    win_t, win_n, win_loss = time.perf_counter(), 0, 0.0

                is_best = False
                if self.val_set is not None and (it % t.val_every == 0 or it == t.total_iter):
                    if self.rank == 0:
                        last_psnr = self.validate()
                        is_best = last_psnr > self.best_psnr
                        if is_best:
                            self.best_psnr, self.best_iter = last_psnr, it
                        self._log_row(iter=it, psnr=last_psnr, elapsed_s=time.perf_counter() - t0)
                        if bar is not None:
                            bar.set_postfix(loss="-" if last_loss is None else f"{last_loss:.4f}", psnr=f"{last_psnr:.2f}")
                        elif self.verbose:
                            self._say(f"iter {it}: val PSNR {last_psnr:.2f} dB (best {self.best_psnr:.2f} @ {self.best_iter})")
                    self._barrier()

                stop = torch.tensor([1.0 if self._stop_signal is not None else 0.0])
                stop = self._all_reduce(stop, dist.ReduceOp.MAX if self.distributed else None)
                if t.snapshot_every and it % t.snapshot_every == 0:
                    self._snapshot()
                if it % t.checkpoint_every == 0 or it == t.total_iter or is_best or stop.item() > 0:
                    self._save(best=is_best)
                    self._barrier()
                if stop.item() > 0:
                    stopped = True
                    break
        finally:
            if bar is not None:
                bar.close()
            for sig, h in old_handlers.items():
                signal.signal(sig, h)
            if self.tb is not None:
                self.tb.close()
        if stopped:
            if self.rank == 0:  # always said, even when quiet: the user must know how to continue
                print(f"stopped at iteration {self.iteration}; checkpoint {self.out / 'last.pth'} "
                      f"(continue with --resume)", file=sys.stderr, flush=True)
            return 128 + int(self._stop_signal or signal.SIGINT)  # 130 SIGINT, 143 SIGTERM
        if self.rank == 0:
            self._plot()
            if self.val_set is not None and self.best_iter:
                self._say(f"done: best validation PSNR {self.best_psnr:.2f} dB at iteration {self.best_iter}; "
                          f"outputs in {self.out}")
            else:
                self._say(f"done: outputs in {self.out}")
        return 0


def _remove_stale_temps(folder: Path) -> None:
    """Delete ``.NAME.PID.RANDOM.tmp`` (and older ``.NAME.PID.tmp``) files left by a writer
    that was killed (its PID is gone)."""
    for p in folder.glob(".*.tmp"):
        parts = p.name.rsplit(".", 3)
        if len(parts) == 4 and parts[1].isdigit():
            pid = int(parts[1])
        elif parts[-2].isdigit():
            pid = int(parts[-2])
        else:
            continue
        if pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            p.unlink(missing_ok=True)
        except OSError:  # exists but not ours: leave it
            pass


def _fmt(v: Any) -> str:
    return f"{v:.6g}" if isinstance(v, float) else str(v)


def _apply_schedule(sched: torch.optim.lr_scheduler.MultiStepLR, t: Any, iteration: int) -> bool:
    """Make a resumed MultiStepLR follow the configured lr / milestones / gamma.

    A checkpoint's scheduler state carries its own milestones, so without this an edited
    schedule would be silently ignored on ``--resume``. The learning rate becomes the one the
    configured schedule gives at ``iteration`` (``lr * gamma ** milestones passed``). Returns
    True when anything changed (the resume is then no longer bit-exact, and says so).
    """
    milestones = Counter(int(m) for m in t.milestones)
    base = [float(t.lr)] * len(sched.base_lrs)
    passed = sum(n for m, n in milestones.items() if m <= iteration)
    lr = float(t.lr) * float(t.gamma) ** passed
    same = (sched.milestones == milestones and float(sched.gamma) == float(t.gamma)
            and [float(b) for b in sched.base_lrs] == base
            and all(math.isclose(g["lr"], lr, rel_tol=1e-12) for g in sched.optimizer.param_groups))
    if same:
        return False
    sched.milestones, sched.gamma, sched.base_lrs = milestones, float(t.gamma), base
    for g in sched.optimizer.param_groups:
        g["initial_lr"], g["lr"] = float(t.lr), lr
    sched._last_lr = [lr] * len(sched.optimizer.param_groups)
    return True


def _diff_keys(a: Any, b: Any, prefix: str = "") -> List[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out: List[str] = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def _resolve_file(name: str, what: str) -> Path:
    from .. import paths

    p = Path(name).expanduser()
    cands = [p] if p.is_absolute() else [c for c in ((paths.data_root() or Path("/nonexistent")) / p, Path.cwd() / p)]
    for c in cands:
        if c.is_file():
            return c
    raise FileNotFoundError(f"{what}: file {name!r} not found (tried {', '.join(map(str, cands))})")


def train(cfg: Config, out_dir: Union[str, Path, None] = None, resume: Union[bool, str, Path] = False,
          overwrite: bool = False, verbose: bool = True) -> int:
    """Run a training job; tears down the process group it created. Returns 0, 130 or 143."""
    trainer = Trainer(cfg, out_dir=out_dir, resume=resume, overwrite=overwrite, verbose=verbose)
    try:
        return trainer.run()
    finally:
        if trainer.distributed and dist.is_initialized():
            dist.destroy_process_group()
