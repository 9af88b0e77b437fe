"""Training and validation data: image folders, random patches, the 8 flip/rotation modes
and the degradation of the task, synthesised on the fly.

Reproducibility design: every training sample has a global index ``i = (iteration - 1) *
global_batch + j``. Everything random about it (which image, where the patch is, the
augmentation mode, the noise, the blur kernel) comes from a generator seeded with
``(seed, i)`` only. Hence the stream of batches does not depend on the number of
DataLoader workers or ranks, and resuming at iteration ``t`` reproduces the exact
batches an uninterrupted run would have seen: no loader state needs saving.

Shapes: a sample is a dict with ``lq`` (C, h, w) degraded input, ``gt`` (C, H, W) target
(``H = h * scale`` for SR), and for deblurring ``kernel`` (1, k, k) summing to 1.

Example:
    >>> import torch
    >>> from conversenet.train.data import augment, sample_generator
    >>> x = torch.arange(6.).reshape(1, 2, 3)
    >>> [tuple(augment(x, m).shape) for m in (0, 1)]
    [(1, 2, 3), (1, 3, 2)]
    >>> a = torch.rand(2, generator=sample_generator(0, 5))
    >>> torch.equal(a, torch.rand(2, generator=sample_generator(0, 5)))
    True
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .. import paths
from ..data import list_images
from ..tasks import get_task
from . import _ops

__all__ = [
    "resolve_folder", "list_images", "sample_generator", "augment",
    "TrainPatches", "ValImages", "IterationBatchSampler",
]


def resolve_folder(name: str, what: str) -> Path:
    """A folder given in a config: absolute, else under the data root, else relative to cwd."""
    p = Path(name).expanduser()
    cands = [p] if p.is_absolute() else []
    if not p.is_absolute():
        root = paths.data_root()
        if root is not None:
            cands.append(root / p)
        cands.append(Path.cwd() / p)
    for c in cands:
        if c.is_dir():
            return c
    tried = ", ".join(str(c) for c in cands)
    raise FileNotFoundError(
        f"{what}: folder {name!r} not found (tried {tried}); set CONVERSENET_DATA or give a path")


def _image_size(path: Path) -> Tuple[int, int]:
    """(width, height) from the file header (no decoding)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except Exception as e:  # unreadable: let the reader report it properly later
        raise ValueError(f"data.train: cannot read {path}: {e}") from None


def sample_generator(seed: int, index: int, stream: int = 0) -> torch.Generator:
    """A torch generator determined by (seed, index, stream) only, well mixed via SeedSequence."""
    s = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(index), int(stream)])
    return torch.Generator().manual_seed(int(s.generate_state(1, np.uint64)[0] >> 1))


def augment(x: torch.Tensor, mode: int) -> torch.Tensor:
    """One of the 8 dihedral modes on (..., H, W): rotate by 90°·(mode % 4), then flip if mode >= 4."""
    if not 0 <= mode < 8:
        raise ValueError(f"mode must be in 0..7, got {mode}")
    y = torch.rot90(x, mode % 4, dims=(-2, -1))
    return torch.flip(y, dims=(-1,)) if mode >= 4 else y


def _uniform(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=g, dtype=torch.float64))


def _degrade_denoise(d, gt: torch.Tensor, g: torch.Generator, train: bool,
                    kernel: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """AWGN of ``d.sigma`` (training: uniform in ``d.sigma_range`` when given).

    With ``d.sigma_focus`` a patch's level is drawn from that sub-range with probability
    ``d.sigma_focus_prob`` instead: a mixture that weights some noise levels more while the
    network still sees the whole blind range.
    """
    sigma = d.sigma
    if train and d.sigma_range is not None:
        lo, hi = d.sigma_range
        if d.sigma_focus is not None and _uniform(g, 0.0, 1.0) < d.sigma_focus_prob:
            lo, hi = d.sigma_focus
        sigma = _uniform(g, lo, hi)
    lq = _ops.add_noise(gt, sigma, g)
    return {"lq": lq, "gt": gt, "sigma": torch.tensor(sigma, dtype=torch.float32)}


def _degrade_sr(d, gt: torch.Tensor, g: torch.Generator, train: bool,
                kernel: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Bicubic 1/``d.scale`` (deterministic: draws nothing from ``g``)."""
    return {"lq": _ops.bicubic_down(gt, d.scale), "gt": gt}


def _degrade_deblur(d, gt: torch.Tensor, g: torch.Generator, train: bool,
                    kernel: Optional[torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Wrap blur with ``kernel`` (None: a random one of ``d.kernel_types``), then AWGN ``d.noise``."""
    if kernel is None:
        kind = d.kernel_types[int(torch.randint(len(d.kernel_types), (), generator=g))]
        kernel = _ops.random_kernel(kind, d.kernel_size, g)
    lq = _ops.add_noise(_ops.circular_blur(gt, kernel), d.noise, g)
    return {"lq": lq, "gt": gt, "kernel": kernel.reshape(1, *kernel.shape[-2:]).float()}


#: The training degradation of each task of :data:`conversenet.tasks.TASK_NAMES` (torch ops,
#: so they live here rather than in the task table, which must not import ``train``).
_DEGRADE = {"denoise": _degrade_denoise, "sr": _degrade_sr, "deblur": _degrade_deblur}


class _Degrader:
    """The task's degradation, shared by training and validation (all inputs (C, H, W) in [0, 1])."""

    def __init__(self, task: str, deg, channels: int) -> None:
        get_task(task)  # an unknown task: ValueError listing the known ones
        if task not in _DEGRADE:
            raise ValueError(f"task {task!r} has no training degradation (training supports {tuple(_DEGRADE)})")
        self.task, self.deg, self.channels = task, deg, channels
        self._fn = _DEGRADE[task]

    def __call__(self, gt: torch.Tensor, g: torch.Generator, train: bool,
                 kernel: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return self._fn(self.deg, gt, g, train, kernel)


class TrainPatches(Dataset):
    """Random HR patches from an image folder with on-the-fly degradation.

    ``ds[i]`` is the sample of global index ``i`` (see the module docstring); the dataset
    has no natural length, ``len(ds)`` is the number of images.

    Args:
        folder: image folder.
        task: denoise | sr | deblur.
        deg: a :class:`~conversenet.train.config.DegradationConfig`.
        channels: 1 (gray) or 3 (RGB) as the model expects.
        patch_size: HR patch size (a multiple of ``deg.scale`` for SR).
        seed: global seed.
        augment: apply one of the 8 modes.
        cache: keep decoded images in memory.
    """

    def __init__(self, folder: Path, task: str, deg, channels: int, patch_size: int, seed: int,
                 augment: bool = True, cache: bool = True) -> None:
        files = list_images(Path(folder), "data.train")
        self.files = [f for f in files if min(_image_size(f)) >= patch_size]
        self.skipped = len(files) - len(self.files)
        if not self.files:
            raise ValueError(f"data.train: every image in {folder} is smaller than data.patch_size {patch_size}")
        if self.skipped:
            warnings.warn(f"data.train: {self.skipped} of {len(files)} images in {folder} are smaller than "
                          f"data.patch_size {patch_size} and are not used", stacklevel=2)
        if get_task(task).scaled and patch_size % deg.scale:
            raise ValueError(f"data.patch_size ({patch_size}) must be a multiple of degradation.scale ({deg.scale})")
        self.degrade = _Degrader(task, deg, channels)
        self.channels, self.patch, self.seed = channels, patch_size, seed
        self.augment, self.cache = augment, cache
        self._images: Dict[int, torch.Tensor] = {}
        self._perm: Tuple[int, Optional[np.ndarray]] = (-1, None)

    def __len__(self) -> int:
        return len(self.files)

    def _image(self, k: int) -> torch.Tensor:
        img = self._images.get(k)
        if img is None:
            img = _ops.read_image(self.files[k], self.channels)
            if min(img.shape[-2:]) < self.patch:
                raise ValueError(f"data.train: image {self.files[k]} ({img.shape[-1]}x{img.shape[-2]}) "
                                 f"is smaller than data.patch_size {self.patch}")
            if self.cache:
                self._images[k] = img
        return img

    def image_index(self, i: int) -> int:
        """Images are visited in a fresh permutation every pass (epoch) over the folder."""
        n = len(self.files)
        epoch = i // n
        if self._perm[0] != epoch:
            self._perm = (epoch, np.random.default_rng([self.seed, epoch, 1]).permutation(n))
        return int(self._perm[1][i % n])  # type: ignore[index]

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        g = sample_generator(self.seed, i)
        img = self._image(self.image_index(i))
        H, W = img.shape[-2:]
        top = int(torch.randint(H - self.patch + 1, (), generator=g))
        left = int(torch.randint(W - self.patch + 1, (), generator=g))
        gt = img[:, top:top + self.patch, left:left + self.patch]
        if self.augment:
            gt = augment(gt, int(torch.randint(8, (), generator=g)))
        return self.degrade(gt.contiguous(), g, train=True)


class ValImages(Dataset):
    """Whole (or centre-cropped) validation images, degraded deterministically per image."""

    def __init__(self, folder: Path, task: str, deg, channels: int, max_images: int = 0,
                 crop: int = 0, seed: int = 0, kernel: Optional[torch.Tensor] = None) -> None:
        files = list_images(Path(folder), "data.val")
        self.files = files[:max_images] if max_images else files
        self.degrade = _Degrader(task, deg, channels)
        self.task, self.deg, self.channels, self.crop, self.seed = task, deg, channels, crop, seed
        self.kernel = kernel
        self._cache: Dict[int, Dict[str, torch.Tensor]] = {}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, k: int) -> Dict[str, torch.Tensor]:
        if k not in self._cache:
            img = _ops.read_image(self.files[k], self.channels)
            if self.crop:
                H, W = img.shape[-2:]
                c = min(self.crop, H, W)
                t, l = (H - c) // 2, (W - c) // 2
                img = img[:, t:t + c, l:l + c]
            m = get_task(self.task).protocol(scale=self.deg.scale).multiple  # as the published protocol crops
            img = img[:, : img.shape[-2] // m * m, : img.shape[-1] // m * m]
            g = sample_generator(self.seed, k, stream=2)
            self._cache[k] = self.degrade(img.contiguous(), g, train=False, kernel=self.kernel)
        return self._cache[k]


class IterationBatchSampler(Sampler[List[int]]):
    """Index lists for iterations ``start+1 .. total`` of this rank's share of the global batch.

    Iteration ``t`` (1-based) uses global indices ``(t-1)*B .. t*B-1``; rank ``r`` of ``R``
    takes the contiguous slice ``r*B/R .. (r+1)*B/R``, so the ranks together see exactly
    the batch a single process would.

    >>> list(IterationBatchSampler(1, 3, 4, rank=1, world_size=2))
    [[6, 7], [10, 11]]
    """

    def __init__(self, start_iter: int, total_iter: int, global_batch: int, rank: int = 0,
                 world_size: int = 1) -> None:
        if global_batch % world_size:
            raise ValueError(f"data.batch_size ({global_batch}) must be divisible by the number "
                             f"of processes ({world_size})")
        self.start, self.total, self.B, self.rank, self.world = start_iter, total_iter, global_batch, rank, world_size
        self.local = global_batch // world_size

    def __len__(self) -> int:
        return max(0, self.total - self.start)

    def __iter__(self) -> Iterator[List[int]]:
        for t in range(self.start + 1, self.total + 1):
            base = (t - 1) * self.B + self.rank * self.local
            yield list(range(base, base + self.local))


def collate(samples: Sequence[Dict[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    return {k: torch.stack([s[k] for s in samples]) for k in samples[0]}


def worker_init(_: int) -> None:
    # the decoding/resizing work is small per sample: one thread per worker avoids oversubscription
    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: workers keep serving batches while the main
    # process finishes its iteration and saves a checkpoint
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
