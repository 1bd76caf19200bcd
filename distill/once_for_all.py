"""Once-for-all training (ENERZAI Research, MAI 2021 report, seed 001, Sec. 4.4 and Fig. 6).

A super-network and a sub-network share one trunk.  The sub-network is the student as registered: its
trunk and its own small top (Smallnet: conv3 + pixel shuffle; LW-ISP: up4 + tail + sigmoid).  The
super-network is the same trunk with a larger, detachable top: a few residual dense blocks (ESRGAN /
RDN), then a conv and a pixel shuffle up to the output resolution, then a sigmoid (targets are sRGB in
[0, 1]).  Both train jointly -- ``sub loss + weight * super loss``, each the recipe's student loss --
so the trunk learns from both tops; once the super-network's PSNR passes ``threshold_db`` it is
detached and the sub-network fine-tunes alone for the remaining steps.

**Distillation from the detached super-network** (``distill > 0``; the Once-for-All paper, Cai et al. 2019,
which ENERZAI's scheme cites, trains its sub-networks by distillation from the largest one).  At the detach
the super-network (the trunk as it is then, frozen, and the head) becomes the student's teacher for the
fine-tune: its output supervises the student's (L1) on the paired batch and, with an ``unpaired`` RAW
source, on a batch of RAW without targets that it labels -- a teacher that costs no separate training run.
The term is on only while the super-network's PSNR average (on the training batches) is above the
student's (a teacher worse than its student cannot help: the distillation benchmark's rule); logged
``ofa_distill`` (the paired L1), ``ofa_unpaired`` and ``ofa_sub_psnr`` (the student's average).

The head is never part of the student: it reads the trunk through a forward hook on the module path
the student declares (``ModelInfo.trunk_tap``, or the recipe's ``trunk_tap``), so the saved, pruned,
folded and exported student has exactly its own weights.

The PSNR that decides the detach is an exponential moving average (``ema``) of the super output's batch
PSNR on the training batches (averaged over ranks under DDP, so every rank detaches at the same step);
the step whose update makes it reach the threshold is the last joint step.  From the next step on the
trunk is not tapped and the head is not run, so it gets no gradient (Adam skips a parameter whose grad
is None: the head's weights stay as they were).  :meth:`OnceForAll.state_dict` holds the head's weights,
the average and the detach step: the trainer's checkpoint carries it, so a resumed run continues
attached or detached exactly as it stopped.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.data.unpaired import UnpairedRaw
from distill.metrics import psnr
from distill.taps import FeatureTaps

PSNR_EMA = 0.9
"""Weight of the previous average in the super-network's PSNR average (one batch is noisy)."""
DENSE_LAYERS = 3
RESIDUAL_SCALE = 0.2  # ESRGAN's residual scaling: the blocks start close to the identity
Criterion = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, dict[str, float]]]


class OnceForAllError(ValueError):
    """The trunk tap gives no feature map the head can bring to the output's size (named with both shapes)."""


class ResidualDenseBlock(nn.Module):
    """``x + 0.2 * fuse([x, d1, d2, d3])`` where each ``d_i`` is a 3x3 conv + LeakyReLU of everything
    before it (dense connections, RDN's local feature fusion by a 1x1 conv, ESRGAN's residual scaling)."""

    def __init__(self, channels: int, growth: int, layers: int = DENSE_LAYERS) -> None:
        super().__init__()
        self.dense = nn.ModuleList(nn.Conv2d(channels + i * growth, growth, 3, padding=1) for i in range(layers))
        self.act = nn.LeakyReLU(0.2)
        self.fuse = nn.Conv2d(channels + layers * growth, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for conv in self.dense:
            features.append(self.act(conv(torch.cat(features, dim=1))))
        return x + RESIDUAL_SCALE * self.fuse(torch.cat(features, dim=1))


class SuperHead(nn.Module):
    """Trunk features ``(N, C, h, w)`` -> RGB ``(N, 3, s*h, s*w)`` in [0, 1]: conv to ``width``, ``blocks``
    residual dense blocks with a global skip, conv to ``3 * s^2`` channels, pixel shuffle ``s``, sigmoid."""

    def __init__(self, in_channels: int, width: int = 16, blocks: int = 2, scale: int = 2) -> None:
        super().__init__()
        if width < 1 or blocks < 1 or scale < 1:
            raise ValueError(f"super head needs width, blocks and scale >= 1; got {width}, {blocks}, {scale}")
        self.entry = nn.Conv2d(in_channels, width, 3, padding=1)
        self.blocks = nn.Sequential(*(ResidualDenseBlock(width, max(4, width // 2)) for _ in range(blocks)))
        self.body_out = nn.Conv2d(width, width, 3, padding=1)
        self.to_rgb = nn.Conv2d(width, 3 * scale * scale, 3, padding=1)
        self.shuffle = nn.PixelShuffle(scale) if scale > 1 else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        x = self.entry(features)
        x = x + self.body_out(self.blocks(x))
        return torch.sigmoid(self.shuffle(self.to_rgb(x)))


class SuperNetwork(nn.Module):
    """A (frozen) student trunk + super head as one RAW -> RGB network: the detached super-network."""

    def __init__(self, trunk: nn.Module, trunk_tap: str, head: nn.Module) -> None:
        super().__init__()
        self.trunk, self.head = trunk.eval().requires_grad_(False), head
        self.taps = FeatureTaps(self.trunk, [trunk_tap], owner="super-network trunk")
        self.trunk_tap = trunk_tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with self.taps:
            self.trunk(x)
        return self.head(self.taps.collect()[self.trunk_tap])


class OnceForAll:
    """The detachable super-network head on a student's trunk, its loss and the detach rule.

    ``prepare(student, x, target)`` probes the student once (before the optimiser is made) to read the
    trunk's channels and the output/trunk size ratio, and builds the head; ``parameters()`` go into the
    optimiser beside the student's.  Each step the student's forward runs inside :meth:`tapping`, then
    :meth:`loss` adds ``weight * criterion(head(trunk), target)`` and updates the PSNR average.
    """

    def __init__(self, trunk_tap: str, *, threshold_db: float, head_width: int = 16, blocks: int = 2,
                 weight: float = 1.0, ema: float = PSNR_EMA, seed: int = 0, distill: float = 0.0,
                 unpaired: UnpairedRaw | None = None, unpaired_batch: int = 4) -> None:
        if not weight > 0:
            raise ValueError(f"once-for-all weight must be > 0; got {weight}")
        if not distill >= 0:
            raise ValueError(f"once-for-all distill weight must be >= 0; got {distill}")
        if unpaired is not None and distill == 0:
            raise ValueError("once-for-all unpaired RAW is labelled by the detached super-network: set distill > 0")
        if unpaired_batch < 1:
            raise ValueError(f"once-for-all unpaired_batch must be >= 1; got {unpaired_batch}")
        self.distill, self.unpaired, self.unpaired_batch = float(distill), unpaired, int(unpaired_batch)
        self.sub_psnr_ema: float | None = None
        self.frozen: SuperNetwork | None = None  # built at the first step after the detach
        self._pending_trunk: dict[str, torch.Tensor] | None = None  # a resumed run's frozen trunk
        if not 0 <= ema < 1:
            raise ValueError(f"once-for-all PSNR average weight must be in [0, 1); got {ema}")
        if math.isnan(threshold_db):
            raise ValueError("once-for-all threshold_db must be a number of dB (inf: never detach)")
        self.trunk_tap, self.threshold_db, self.weight, self.ema = trunk_tap, float(threshold_db), float(weight), ema
        self.head_width, self.blocks, self.seed = int(head_width), int(blocks), int(seed)
        self.head: nn.Module = nn.Identity()  # built by prepare()
        self.taps: FeatureTaps | None = None
        self.psnr_ema: float | None = None
        self.detached_step: int | None = None

    @property
    def detached(self) -> bool:
        return self.detached_step is not None

    def prepare(self, student: nn.Module, x: torch.Tensor) -> None:
        """Build the head for the trunk's shape (one eval-mode probe; the head's init draws from its own
        generator seeded by ``seed``, so the global RNG and with it the rest of training are untouched)."""
        self.taps = FeatureTaps(student, [self.trunk_tap], owner="student")
        was_training = student.training
        student.eval()  # no BatchNorm running-stat update from the probe
        try:
            with torch.no_grad(), self.taps:
                out = student(x)
        finally:
            student.train(was_training)
        trunk = self.taps.collect()[self.trunk_tap]
        if trunk.ndim != 4 or not isinstance(out, torch.Tensor) or out.ndim != 4 or out.shape[1] != 3:
            raise OnceForAllError(f"once-for-all needs a feature map at trunk tap {self.trunk_tap!r} and an RGB image "
                             f"out; got {tuple(trunk.shape)} and {getattr(out, 'shape', type(out).__name__)}")
        (h, w), (oh, ow) = trunk.shape[-2:], out.shape[-2:]
        scale = oh // h
        if scale < 1 or oh != scale * h or ow != scale * w:
            raise OnceForAllError(f"once-for-all: the output ({oh}x{ow}) is not a whole multiple of the trunk tap "
                             f"{self.trunk_tap!r} ({h}x{w}); tap a module at the packed or a finer resolution")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.head = SuperHead(trunk.shape[1], self.head_width, self.blocks, scale).to(x.device)

    def parameters(self) -> list[nn.Parameter]:
        """The head's parameters: trained with the student until the detach, never saved with it."""
        return list(self.head.parameters())

    def tapping(self) -> AbstractContextManager[Any]:
        """Around the student's forward: records the trunk while attached, nothing after the detach."""
        if self.taps is None:
            raise RuntimeError("OnceForAll.prepare(student, x) must run before the first step")
        return nullcontext() if self.detached else self.taps

    def super_forward(self) -> torch.Tensor | None:
        """The super-network's image from the trunk just recorded; None once detached (no head forward)."""
        if self.detached or self.taps is None:
            return None
        return self.head(self.taps.collect()[self.trunk_tap])

    def loss(self, pred: torch.Tensor, target: torch.Tensor, criterion: Criterion,
             step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``weight * criterion(pred, target)`` for the super image ``pred``; updates the PSNR average and
        detaches at ``step`` when it reaches ``threshold_db``.  Logged: ``ofa_super`` (the super loss),
        ``ofa_super_psnr`` (the average) and, at the detach step, ``ofa_detached_step``."""
        term, _ = criterion(pred, target)
        self.psnr_ema = self._average(pred, target, self.psnr_ema)
        parts = {"ofa_super": float(term.detach()), "ofa_super_psnr": self.psnr_ema}
        if self.psnr_ema >= self.threshold_db:
            self.detached_step = step
            parts["ofa_detached_step"] = float(step)
        return self.weight * term, parts

    def _average(self, pred: torch.Tensor, target: torch.Tensor, previous: float | None) -> float:
        """The PSNR moving average after this batch (the batch PSNR averaged over DDP ranks)."""
        batch_psnr = torch.tensor(psnr(pred.detach(), target), dtype=torch.float64)
        if distributed.info().enabled:
            batch_psnr = batch_psnr.to(pred.device)
            dist.all_reduce(batch_psnr)
            batch_psnr = batch_psnr.cpu() / distributed.info().world_size
        value = float(batch_psnr)
        return value if previous is None else self.ema * previous + (1 - self.ema) * value

    def distill_loss(self, student: nn.Module, x: torch.Tensor, pred: torch.Tensor, target: torch.Tensor,
                     step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """Distillation from the detached super-network, for one step after the detach (zero before):
        ``distill * (L1(pred, super(x)) + L1(student(raw), super(raw)))``, the second term on unpaired batch
        ``step`` when there is an unpaired source; zero while the super-network's average PSNR is not above
        the student's.  ``super`` is the trunk and head as they were at the detach, frozen."""
        if self.distill == 0:
            return pred.new_zeros(()), {}
        self.sub_psnr_ema = self._average(pred, target, self.sub_psnr_ema)
        parts = {"ofa_sub_psnr": self.sub_psnr_ema}
        if not self.detached:
            return pred.new_zeros(()), parts
        teacher = self._teacher(student)
        with torch.no_grad():
            label = teacher(x).float()
        self.psnr_ema = self._average(label, target, self.psnr_ema)
        parts["ofa_super_psnr"] = self.psnr_ema
        if self.psnr_ema <= self.sub_psnr_ema:
            return pred.new_zeros(()), parts
        term = F.l1_loss(pred.float(), label)
        parts["ofa_distill"] = float(term.detach())
        if self.unpaired is not None:
            raw = torch.from_numpy(self.unpaired.batch(step, self.unpaired_batch, rank=distributed.info().rank))
            raw = raw.to(x.device)
            if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
                raw = raw.contiguous(memory_format=torch.channels_last)  # as the paired batches
            with torch.no_grad():
                unpaired_label = teacher(raw).float()
            unpaired_term = F.l1_loss(student(raw).float(), unpaired_label)
            parts["ofa_unpaired"] = float(unpaired_term.detach())
            term = term + unpaired_term
        return self.distill * term, parts

    def _teacher(self, student: nn.Module) -> SuperNetwork:
        """The super-network frozen at the detach: a copy of the student's trunk as it was then (or as a
        resumed checkpoint saved it) and the head, which stops training at the detach anyway."""
        if self.frozen is None:
            trunk = copy.deepcopy(student)
            if self._pending_trunk is not None:
                trunk.load_state_dict(self._pending_trunk)
                self._pending_trunk = None
            self.frozen = SuperNetwork(trunk, self.trunk_tap, self.head)
        return self.frozen

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs: the head's weights, the PSNR average and the detach step (-1: attached)."""
        trunk = self.frozen.trunk.state_dict() if self.frozen is not None else self._pending_trunk
        return {"head": self.head.state_dict(), "psnr_ema": float("nan") if self.psnr_ema is None else self.psnr_ema,
                "sub_psnr_ema": float("nan") if self.sub_psnr_ema is None else self.sub_psnr_ema,
                "detached_step": -1 if self.detached_step is None else self.detached_step, "frozen_trunk": trunk}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.head.load_state_dict(state["head"])
        self.psnr_ema = None if math.isnan(state["psnr_ema"]) else float(state["psnr_ema"])
        sub = float(state.get("sub_psnr_ema", float("nan")))  # absent in checkpoints written before distill
        self.sub_psnr_ema = None if math.isnan(sub) else sub
        self.frozen, self._pending_trunk = None, state.get("frozen_trunk")
        self.detached_step = None if int(state["detached_step"]) < 0 else int(state["detached_step"])

    def summary(self) -> dict[str, float]:
        """The stage's metrics: the detach step (-1: never detached), the last PSNR average, the head size."""
        return {"ofa_detached_step": float(-1 if self.detached_step is None else self.detached_step),
                "ofa_super_psnr": float("nan") if self.psnr_ema is None else self.psnr_ema,
                "ofa_head_params": float(sum(p.numel() for p in self.parameters()))}
