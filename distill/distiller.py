"""Teacher -> student distillation terms for one training step (recorder -> adapter -> loss).

Composable in one student stage, each with its weight:

* **output KD**: the frozen teacher's output on the same input is a soft target (also MiAlgo's use:
  the teacher's output is cleaner than misaligned RAW/RGB ground truth);
* **feature KD**: pairs of tapped features, each through an adapter (1x1 conv / resize) and a loss
  (``mse`` = the LW-ISP paper's L2, ``l1``, ``cosine``); all pairs summed with per-pair weights, the sum
  scaled by ``feature_weight`` (the paper's beta);
* **heterogeneous clean-image KD** (LW-ISP, Sec. 3.3-3.5) is feature KD whose teacher sees the clean
  target J (``teacher_input="target"``) while the student sees RAW;
* **level-wise soft labels** (AA-UNet, team CASIA) is feature KD over every U-Net level, paired by name,
  with L1;
* **unpaired RAW** (``unpaired_weight``): each step a batch of RAW that has no target
  (``distill.data.unpaired.UnpairedRaw``) goes through the teacher and the student, and
  ``unpaired_weight * L1(student, teacher)`` joins the loss (logged as ``kd_unpaired``).

The teacher is frozen and runs without gradients, optionally through a :class:`TeacherCache`.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distill import distributed
from distill.adapters import FeaturePair, auto_pairs, build_adapters
from distill.losses import get_loss
from distill.taps import FeatureTaps, tap_paths

if TYPE_CHECKING:
    from distill.data.unpaired import UnpairedRaw
    from distill.teacher_cache import TeacherCache

OUTPUT_KEY = "__output__"  # the teacher's final image in its outputs dict (not a module path)
TeacherInput = Literal["raw", "target"]


class Distiller:
    """Holds the frozen teacher, the feature pairs and their adapters; computes the distillation loss.

    ``pairs=None`` pairs the models' declared ``feature_taps`` automatically at :meth:`prepare` (by name,
    else by spatial size; ``auto_last`` keeps the finest ones).
    """

    def __init__(
        self,
        teacher: nn.Module,
        *,
        output_weight: float = 0.0,
        output_loss: str = "l1",
        pairs: Sequence[FeaturePair] | None = (),
        feature_weight: float = 1.0,
        feature_loss: str = "mse",
        auto_last: int | None = None,
        teacher_input: TeacherInput = "raw",
        cache: TeacherCache | None = None,
        unpaired: UnpairedRaw | None = None,
        unpaired_weight: float = 0.0,
        unpaired_batch: int = 8,
    ) -> None:
        if teacher_input not in ("raw", "target"):
            raise ValueError(f"teacher_input must be 'raw' or 'target'; got {teacher_input!r}")
        if unpaired is not None and unpaired_weight > 0 and teacher_input != "raw":
            raise ValueError("unpaired RAW needs a RAW teacher; a clean-image teacher (teacher_input='target') "
                             "cannot label RAW that has no target")
        self.teacher = teacher.eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.output_weight, self.output_fn = float(output_weight), get_loss(output_loss)
        self.pairs: list[FeaturePair] | None = list(pairs) if pairs is not None else None
        self.feature_weight, self.feature_loss, self.auto_last = float(feature_weight), feature_loss, auto_last
        self.teacher_input: TeacherInput = teacher_input
        self.cache = cache
        self.unpaired = unpaired if unpaired_weight > 0 else None
        self.unpaired_weight, self.unpaired_batch = float(unpaired_weight), int(unpaired_batch)
        self.adapters = nn.ModuleDict()
        self.student_taps: FeatureTaps | None = None
        self._teacher_taps: FeatureTaps | None = None
        self._losses = {}
        if self.pairs:
            self._losses = {p.key: get_loss(p.loss) for p in self.pairs}

    @property
    def uses_features(self) -> bool:
        return self.pairs is None or bool(self.pairs)

    def teacher_view(self, x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """What the teacher sees for a batch: the student's RAW input, or the clean target J."""
        return target if self.teacher_input == "target" else x

    def prepare(self, student: nn.Module, x: torch.Tensor, target: torch.Tensor) -> None:
        """Probe both models once on a batch: resolve automatic pairs, check every pair's shapes (an error
        lists both paths and shapes) and build the adapters.  Call before the optimiser is made."""
        if not self.uses_features:
            return
        s_paths = [p.student for p in self.pairs] if self.pairs else list(tap_paths(student))
        t_paths = [p.teacher for p in self.pairs] if self.pairs else list(tap_paths(self.teacher))
        if not s_paths or not t_paths:
            raise ValueError("automatic feature pairs need feature_taps on both models; list distill.features.pairs")
        probe = FeatureTaps(student, s_paths, owner="student")
        was_training = student.training
        student.eval()  # no BatchNorm running-stat update from the probe
        try:
            with torch.no_grad(), probe:
                student(x)
        finally:
            student.train(was_training)
        t_feats = self._run_teacher(self.teacher_view(x, target), t_paths, output=False)
        s_feats = probe.collect()
        if self.pairs is None:
            self.pairs = auto_pairs(s_feats, t_feats, self.feature_loss, 1.0, self.auto_last)
            self._losses = {p.key: get_loss(p.loss) for p in self.pairs}
        self.adapters = build_adapters(self.pairs, s_feats, t_feats).to(x.device)
        self.student_taps = FeatureTaps(student, [p.student for p in self.pairs], owner="student")

    def parameters(self) -> list[nn.Parameter]:
        """The adapters' parameters: trained with the student, never saved with it."""
        return list(self.adapters.parameters())

    @torch.no_grad()
    def _run_teacher(self, x: torch.Tensor, paths: Sequence[str], output: bool) -> dict[str, torch.Tensor]:
        self.teacher.eval()
        if not paths:
            return {OUTPUT_KEY: self.teacher(x)} if output else {}
        if self._teacher_taps is None or self._teacher_taps.paths != tuple(paths):
            self._teacher_taps = FeatureTaps(self.teacher, paths, owner="teacher")
        with self._teacher_taps:
            out = self.teacher(x)
        feats = self._teacher_taps.collect()
        return {**feats, OUTPUT_KEY: out} if output else feats

    def teacher_targets(self, x_teacher: torch.Tensor) -> dict[str, torch.Tensor]:
        """The teacher's output and tapped features for a batch (from the cache where it has them)."""
        paths = sorted({p.teacher for p in self.pairs or ()})
        compute = lambda batch: self._run_teacher(batch, paths, output=self.output_weight > 0)  # noqa: E731
        return self.cache(x_teacher, compute) if self.cache is not None else compute(x_teacher)

    def loss(self, pred: torch.Tensor, x: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Weighted distillation loss for a step whose student forward ran inside ``student_taps``.

        Returns the total and each term (``kd_output``, ``kd_feat_<pair>``, ``kd_features``) for logging.
        """
        targets = self.teacher_targets(self.teacher_view(x, target))
        total = pred.new_zeros(())
        parts: dict[str, float] = {}
        if self.output_weight > 0:
            term = self.output_fn(pred, targets[OUTPUT_KEY])
            parts["kd_output"] = float(term.detach())
            total = total + self.output_weight * term
        if self.pairs:
            if self.student_taps is None:
                raise RuntimeError("Distiller.prepare(student, x, target) must run before the first loss")
            student_feats = self.student_taps.collect()
            features = pred.new_zeros(())
            for pair in self.pairs:
                teacher_feat = targets[pair.teacher]
                adapted = self.adapters[pair.key](student_feats[pair.student], teacher_feat.shape[-2:])
                term = self._losses[pair.key](adapted, teacher_feat)
                parts[f"kd_feat_{pair.key}"] = float(term.detach())
                features = features + pair.weight * term
            parts["kd_features"] = float(features.detach())
            total = total + self.feature_weight * features
        return total, parts

    def unpaired_loss(self, student: Callable[[torch.Tensor], torch.Tensor], like: torch.Tensor,
                      step: int) -> tuple[torch.Tensor, dict[str, float]]:
        """``unpaired_weight * L1(student(raw), teacher(raw))`` on unpaired batch ``step`` (zero and no
        batch drawn without an unpaired source); ``like`` gives the device and memory format."""
        if self.unpaired is None:
            return like.new_zeros(()), {}
        batch = self.unpaired.batch(step, self.unpaired_batch, rank=distributed.info().rank)
        raw = torch.from_numpy(batch).to(like.device)
        if like.ndim == 4 and not like.is_contiguous() and like.is_contiguous(memory_format=torch.channels_last):
            raw = raw.contiguous(memory_format=torch.channels_last)  # as the paired batches (channels_last)
        with torch.no_grad():
            self.teacher.eval()
            label = self.teacher(raw)
        term = F.l1_loss(student(raw).float(), label.float())
        return self.unpaired_weight * term, {"kd_unpaired": float(term.detach())}
