"""Validation: fixed crops, their degraded inputs and targets, and the fixed `val/spec_loss`.

The crops and degradations are the same in every run of a dataset and task, so any two runs'
`val/spec_loss` are comparable whatever they trained on. With `metrics.val_cdpam=true` the validator also
logs `val/cdpam`, the mean CDPAM distance (audiolab/losses/cdpam.py) of the outputs to the targets on the
same crops: a learned perceptual figure beside the fixed spectral one, comparable between runs in the same way.

Where the error is left: `val/spec_loss_<group>` and `val/improvement_<group>` for each band of
`SPEC_BANDS_HZ` (low, mid, high) and, when the task labels its crops (`validation_groups`), for each label
(the semitone shifts k-4 ... k+4 of the restoration task). They are means of per-crop distances (see
`SpecDistance.per_crop`); the headline `val/spec_loss` is computed as it always was.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from audiolab.common.distributed import SINGLE, World
from audiolab.data.clips import AudioData, fixed_crops
from audiolab.losses.cdpam import CdpamLoss
from audiolab.metrics.bands import ALL_BINS, SPEC_BANDS_HZ
from audiolab.metrics.spectral import SpecDistance
from audiolab.models.base import AudioModel
from audiolab.tasks.autoencode import active_dimensions
from audiolab.train.device import autocast


class Validator:
    """Fixed validation crops, their degraded inputs and targets, the fixed `val/spec_loss`, optionally `val/cdpam`."""

    def __init__(self, data: AudioData, task: Any, device: torch.device, n_samples: int,
                 cdpam: bool = False) -> None:
        segment, batch_size = data.validation_segment, data.validation_batch_size
        crops = fixed_crops(data.val, segment, data.val_max_crops)
        if not crops:
            raise ValueError(f"the validation split has no clip of at least one validation crop ({segment} samples)")
        clean = torch.from_numpy(np.stack([data.val.crop(c, s, segment) for c, s in crops])).to(device)
        pairs = [task.validation_pair(clean[i:i + batch_size], i) for i in range(0, len(clean), batch_size)]
        self.inputs = torch.cat([p[0] for p in pairs])
        self.targets = torch.cat([p[1] for p in pairs])
        self.batch_size = batch_size
        self.sample_rate = data.sample_rate
        self.distance = SpecDistance().to(device)
        # Frozen pretrained CDPAM (needs the `cdpam` extra); built only when metrics.val_cdpam asks for it.
        self.cdpam = CdpamLoss(sample_rate=data.sample_rate).to(device).eval() if cdpam else None
        # Sample clips spread over the validation set, the same in every run.
        self.sample_index = np.linspace(0, len(crops) - 1, n_samples).round().astype(int).tolist() if n_samples else []
        self.baseline = self.mean_distance(self.inputs) if task.has_input_baseline else None
        groups = task.validation_groups(len(crops)) if hasattr(task, "validation_groups") else {}
        self.groups = {label: torch.as_tensor(idx, dtype=torch.long) for label, idx in groups.items() if idx}
        baseline_crops = self.crop_distances(self.inputs) if task.has_input_baseline else None
        self.group_baselines = self._group_means(baseline_crops) if baseline_crops is not None else {}
        # Without a do-nothing baseline (autoencoding), silence is the fixed reference instead.
        self.silence = None if task.has_input_baseline else self.mean_distance(torch.zeros_like(self.targets))
        self.active_threshold = float(getattr(task, "active_threshold", 0.01))

    def mean_distance(self, outputs: torch.Tensor) -> float:
        """Crop-weighted mean of the fixed spectral distance between outputs and targets."""
        total = 0.0
        for i in range(0, len(outputs), self.batch_size):
            out, tgt = outputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]
            total += float(self.distance(out, tgt)) * len(out)
        return total / len(outputs)

    @torch.no_grad()
    def crop_distances(self, outputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-crop distances of outputs to the targets, over all bins and per band: (N,) CPU tensors each."""
        parts = [self.distance.per_crop(outputs[i:i + self.batch_size], self.targets[i:i + self.batch_size],
                                        self.sample_rate) for i in range(0, len(outputs), self.batch_size)]
        return {name: torch.cat([p[name].cpu() for p in parts]) for name in parts[0]}

    def breakdown(self, crops: dict[str, torch.Tensor]) -> dict[str, float]:
        """val/spec_loss_<group> and val/improvement_<group> per band and per crop label, from per-crop distances."""
        metrics: dict[str, float] = {}
        for name, value in self._group_means(crops).items():
            if not np.isfinite(value):  # a band above Nyquist at a low rate: nothing to report
                continue
            metrics[f"val/spec_loss_{name}"] = value
            if name in self.group_baselines:
                metrics[f"val/improvement_{name}"] = 1.0 - value / self.group_baselines[name]
        return metrics

    def _group_means(self, crops: dict[str, torch.Tensor]) -> dict[str, float]:
        """Mean per-crop distance of each band (its own bins) and of each crop label (all bins)."""
        means = {band: float(crops[band].mean()) for band in SPEC_BANDS_HZ}
        return means | {label: float(crops[ALL_BINS][idx].mean()) for label, idx in self.groups.items()}

    @torch.no_grad()
    def mean_cdpam(self, outputs: torch.Tensor) -> float:
        """Crop-weighted mean CDPAM distance between outputs and targets (in fp32, batch by batch)."""
        if self.cdpam is None:
            raise RuntimeError("this Validator was built without CDPAM (cdpam=False)")
        total = 0.0
        for i in range(0, len(outputs), self.batch_size):
            out, tgt = outputs[i:i + self.batch_size], self.targets[i:i + self.batch_size]
            total += float(self.cdpam.distance(out, tgt).sum())
        return total / len(outputs)

    @torch.no_grad()
    def run(self, model: AudioModel, amp: torch.dtype | None, world: World = SINGLE
            ) -> tuple[dict[str, float], torch.Tensor]:
        """Validate in eval mode (then restore train mode); return metrics and all outputs.

        Under torchrun each rank scores every world.size-th batch and the ranks exchange their parts, so
        every rank gets what one process would: the same batches, summed in the same order.
        """
        was_training = model.training
        model.eval()
        try:
            starts = range(0, len(self.inputs), self.batch_size)
            parts = [self._score(model, start, amp) for start in starts[world.rank::world.size]]
        finally:
            model.train(was_training)
        if world.distributed:
            shared = world.gather([{k: v.cpu() if torch.is_tensor(v) else v for k, v in p.items()} for p in parts])
            parts = sorted((p for rank_parts in shared for p in rank_parts), key=lambda p: p["start"])
        outputs = torch.cat([p["output"].to(self.inputs.device) for p in parts])
        n = len(outputs)
        metrics = {"val/spec_loss": sum(p["distance"] for p in parts) / n}
        if self.baseline is not None:
            metrics["val/spec_loss_input"] = self.baseline
            metrics["val/improvement"] = 1.0 - metrics["val/spec_loss"] / self.baseline
        if self.silence is not None:
            metrics["val/spec_loss_silence"] = self.silence
        if self.cdpam is not None:
            metrics["val/cdpam"] = sum(p["cdpam"] for p in parts) / n
        metrics.update(self.breakdown({name: torch.cat([p["crops"][name] for p in parts])
                                       for name in parts[0]["crops"]}))
        if "kl" in parts[0]:
            metrics["val/kl"] = sum(p["kl"] for p in parts) / n
            latents = torch.cat([p["latent"] for p in parts])
            metrics["val/active_dims"] = float(active_dimensions(latents, self.active_threshold))
        return metrics, outputs

    def _score(self, model: AudioModel, start: int, amp: torch.dtype | None) -> dict[str, Any]:
        """One validation batch: its outputs, and its crop-weighted sums (distance, CDPAM, KL)."""
        batch, target = self.inputs[start:start + self.batch_size], self.targets[start:start + self.batch_size]
        with autocast(self.inputs.device, amp):
            out, stats = model.forward_with_stats(batch)
        out = out.float()
        part: dict[str, Any] = {"start": start, "output": out,
                                "distance": float(self.distance(out, target)) * len(out),
                                "crops": {k: v.cpu() for k, v in self.distance.per_crop(out, target,
                                                                                         self.sample_rate).items()}}
        if self.cdpam is not None:
            part["cdpam"] = float(self.cdpam.distance(out, target).sum())
        if "kl" in stats:
            part["kl"] = float(stats["kl"]) * len(batch)
            part["latent"] = stats["latent"].float()
        return part

    def sample_clips(self, outputs: torch.Tensor) -> dict[str, list[np.ndarray]]:
        """input/output/target audio of the fixed sample clips, as numpy arrays (no input when it is the target)."""
        roles = (("input", self.inputs),) if self.baseline is not None else ()
        return {role: [t[i].detach().cpu().float().numpy() for i in self.sample_index]
                for role, t in (*roles, ("output", outputs), ("target", self.targets))}
