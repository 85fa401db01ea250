"""Typed schemas for the `trainer`, `recipe`, `data` and `task` groups, and the range checks Hydra cannot do.

Hydra rejects unknown keys and wrong types while composing (the schemas are merged under each
group's YAML through its defaults list). The schemas hold types only: every value is written once, in
the group's YAML, where its comment explains it. Ranges and cross-group rules (a segment must be a multiple
of the model's hop) are checked by `validate_config` before anything is built.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hydra.core.config_store import ConfigStore
from hydra.utils import get_object
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue

from audiolab.losses.kinds import LossKind, loss_kind

# The checks import the model, metric and loss modules (and so torch) only when they run: the schemas alone
# are registered by every CLI call, `run.py --help` and tab completion included, which must answer at once.


class ConfigError(ValueError):
    """A config value outside its allowed range; the message names the key."""


@dataclass
class TrainerConfig:
    """How long to train, how often to validate, and where (values: conf/trainer/default.yaml)."""

    max_steps: int = MISSING
    val_every: int = MISSING
    log_every: int = MISSING
    seed: int = MISSING
    device: str = MISSING  # auto | cpu | cuda | cuda:N
    precision: str = MISSING  # auto | bf16 | fp32
    overfit: bool = MISSING
    sample_clips: int = MISSING
    progress: bool = MISSING
    threads: int = MISSING
    ema_decay: float | None = MISSING
    compile: str = MISSING  # auto | true | false (a YAML bool is read as its string)
    compile_backend: str = MISSING
    dist_timeout_s: float = MISSING
    trust_checkpoint: bool = MISSING


@dataclass
class SupervisedRecipeConfig:
    """One generator step per batch: output, weighted loss, backward, optimizer step (conf/recipe/supervised.yaml)."""

    _target_: str = "audiolab.train.recipes.supervised.SupervisedRecipe"


@dataclass
class VaeGanRecipeConfig:
    """Two-phase RAVE-style training (values and their meaning: conf/recipe/vae_gan.yaml)."""

    _target_: str = "audiolab.train.recipes.vae_gan.VaeGanRecipe"
    phase1_steps: int | None = MISSING
    beta_warmup_steps: int = MISSING
    beta_start: float = MISSING
    beta_end: float = MISSING
    d_every: int = MISSING
    d_concat: bool = MISSING


@dataclass
class DataConfig:
    """Fields every dataset shares; each dataset's schema extends it (values: conf/data/*.yaml)."""

    _target_: str = "???"
    sample_rate: int = MISSING
    segment: int = MISSING
    batch_size: int = MISSING
    num_workers: int = MISSING
    cache_dir: str = "${paths.cache}"
    val_max_crops: int | None = MISSING  # validation crops kept (evenly spread); None keeps all
    loader: str = MISSING  # threads | processes
    val_segment: int | None = MISSING  # validation crop length; None: data.segment
    val_batch_size: int | None = MISSING  # crops per validation batch; None: data.batch_size


@dataclass
class SynthDataConfig(DataConfig):
    """The built-in piano-like dataset."""

    _target_: str = "audiolab.data.synth.build_synth_data"
    train_seconds: float = MISSING
    val_seconds: float = MISSING
    clip_seconds: float = MISSING
    seed: int = MISSING


@dataclass
class FolderDataConfig(DataConfig):
    """A folder of the user's audio files (see audiolab/data/folder.py)."""

    _target_: str = "audiolab.data.folder.build_folder_data"
    path: str = MISSING
    val_path: str | None = MISSING
    channels: int = MISSING
    val_fraction: float = MISSING
    dtype: str = MISSING
    normalize: str = MISSING
    peak_db: float = MISSING
    loudness_lufs: float = MISSING
    prepare_workers: int = MISSING
    extensions: list[str] = MISSING
    progress: bool = MISSING


@dataclass
class RestoreTaskConfig:
    """Pitch-shift round-trip restoration (values: conf/task/restore.yaml)."""

    _target_: str = "audiolab.tasks.restore.PitchShiftRestore"
    semitones: list[int] = MISSING
    lowpass_impossible: bool = MISSING
    n_fft: int = MISSING
    max_denominator: int = MISSING
    lowpass_bank: int | None = MISSING


@dataclass
class AutoencodeTaskConfig:
    """Reconstruct the input (VAEs; values: conf/task/autoencode.yaml)."""

    _target_: str = "audiolab.tasks.autoencode.Autoencode"
    active_threshold: float = MISSING


EVAL_METRICS = ("fad", "kid", "diversity", "fad_inf")


@dataclass
class ClapConfig:
    """Where the LAION CLAP checkpoint is, and how far to trust it."""

    checkpoint: str | None = None
    trust_checkpoint: bool = False
    hop_seconds: float = 10.0
    audio_model: str = "HTSAT-base"  # laion-clap model config of the checkpoint's audio tower


@dataclass
class LogMelConfig:
    """The weight-free log-mel statistics embedder."""

    sample_rate: int = 44100
    n_fft: int = 2048
    hop_length: int = 512
    n_mels: int = 64


@dataclass
class KidConfig:
    """Subsets for the kernel inception distance."""

    n_subsets: int = 100
    subset_size: int = 1000


@dataclass
class MetricsConfig:
    """Embedding-based quality metrics (FAD, KID, diversity) at the end of a run and in `audiolab evaluate`,
    and whether each validation also logs `val/cdpam` (values: conf/metrics/default.yaml)."""

    eval: list[str] = field(default_factory=list)
    # The value is written in conf/metrics/default.yaml; this default (as the others here) only fills in the
    # metrics sections of configs saved before the key existed, so they keep validating exactly as they ran.
    val_cdpam: bool = False
    embedder: str = "clap"  # clap | logmel
    batch_size: int = 8
    clap: ClapConfig = field(default_factory=ClapConfig)
    logmel: LogMelConfig = field(default_factory=LogMelConfig)
    kid: KidConfig = field(default_factory=KidConfig)


def register_configs() -> None:
    """Register the schemas with Hydra's ConfigStore (idempotent)."""
    cs = ConfigStore.instance()
    cs.store(group="schema/trainer", name="default", node=TrainerConfig)
    cs.store(group="schema/data", name="synth", node=SynthDataConfig)
    cs.store(group="schema/data", name="folder", node=FolderDataConfig)
    cs.store(group="schema/task", name="restore", node=RestoreTaskConfig)
    cs.store(group="schema/task", name="autoencode", node=AutoencodeTaskConfig)
    cs.store(group="schema/recipe", name="supervised", node=SupervisedRecipeConfig)
    cs.store(group="schema/recipe", name="vae_gan", node=VaeGanRecipeConfig)
    cs.store(group="schema/metrics", name="default", node=MetricsConfig)


_SCHEMAS_BY_TARGET: dict[str, type] = {
    SynthDataConfig._target_: SynthDataConfig,
    FolderDataConfig._target_: FolderDataConfig,
    RestoreTaskConfig._target_: RestoreTaskConfig,
    AutoencodeTaskConfig._target_: AutoencodeTaskConfig,
    SupervisedRecipeConfig._target_: SupervisedRecipeConfig,
    VaeGanRecipeConfig._target_: VaeGanRecipeConfig,
}


def _typed(section: str, node: DictConfig) -> Any:
    """Merge a plain (e.g. saved, resolved) section into its schema so types and keys are checked."""
    schema = TrainerConfig if section == "trainer" else _SCHEMAS_BY_TARGET.get(node.get("_target_"))
    if schema is None:
        return None  # a dataset, task or recipe added later without a schema here: no typed check
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), node))
    except MissingMandatoryValue as err:
        raise ConfigError(f"{section}.{err.full_key} must be set (a config saved by an older audiolab?)") from None


def _imported(key: str, target: str) -> type | None:
    """The class `target` names (None when it names a function); ConfigError naming `key` when it cannot be imported."""
    try:
        found = get_object(target)
    except (ImportError, ValueError) as err:
        raise ConfigError(f"{key}={target!r} cannot be imported: {str(err).splitlines()[0]}") from None
    return found if isinstance(found, type) else None


def _need(ok: bool, key: str, value: Any, allowed: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is out of range: allowed {allowed}")


def validate_config(cfg: DictConfig) -> None:
    """Check value ranges and cross-group rules; raise ConfigError naming the key."""
    from audiolab.models.base import AudioModel, audio_channels_of, hop_length_of

    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise ConfigError(f"{missing[0]} must be set, e.g. python run.py {missing[0]}=..."
                          + (f" (also unset: {', '.join(missing[1:])})" if len(missing) > 1 else ""))
    _check_trainer(_typed("trainer", cfg.trainer))
    _typed("task", cfg.task)
    model_cls = _imported("model._target_", str(cfg.model._target_))
    _check_data(cfg, _typed("data", cfg.data) or cfg.data, hop_length_of(cfg.model) if model_cls else None,
                audio_channels_of(cfg.model) if model_cls else None)
    if "metrics" in cfg:
        validate_metrics(cfg.metrics)
    _check_task(cfg.task)
    _check_optim(cfg.optim)
    kinds = _check_loss(cfg.loss)
    validate_recipe(cfg, kinds, variational=model_cls is not None and issubclass(model_cls, AudioModel)
                    and model_cls.variational)


def _check_trainer(trainer: TrainerConfig) -> None:
    _need(trainer.max_steps >= 1, "trainer.max_steps", trainer.max_steps, ">= 1")
    _need(trainer.val_every >= 1, "trainer.val_every", trainer.val_every, ">= 1")
    _need(trainer.log_every >= 1, "trainer.log_every", trainer.log_every, ">= 1")
    _need(trainer.sample_clips >= 0, "trainer.sample_clips", trainer.sample_clips, ">= 0")
    _need(trainer.threads >= 0, "trainer.threads", trainer.threads, ">= 0")
    _need(trainer.ema_decay is None or 0.0 <= trainer.ema_decay < 1.0, "trainer.ema_decay", trainer.ema_decay,
          "(0, 1), or null or 0 for no EMA")
    _need(str(trainer.compile).lower() in ("auto", "true", "false"), "trainer.compile", trainer.compile,
          "auto, true or false")
    _need(trainer.dist_timeout_s > 0, "trainer.dist_timeout_s", trainer.dist_timeout_s, "> 0 seconds")
    _need(trainer.precision in ("auto", "bf16", "fp32"), "trainer.precision", trainer.precision,
          "one of auto, bf16, fp32")
    _need(trainer.device == "auto" or trainer.device == "cpu" or trainer.device.startswith("cuda"),
          "trainer.device", trainer.device, "auto, cpu, cuda or cuda:N")


def _check_data(cfg: DictConfig, data: Any, hop_length: int | None, audio: int | None) -> None:
    _need(data.sample_rate >= 8000, "data.sample_rate", data.sample_rate, ">= 8000")
    _need(data.segment >= 1, "data.segment", data.segment, ">= 1")
    _need(data.batch_size >= 1, "data.batch_size", data.batch_size, ">= 1")
    _need(data.num_workers >= 0, "data.num_workers", data.num_workers, ">= 0")
    _need(data.loader in ("threads", "processes"), "data.loader", data.loader, "threads or processes")
    from audiolab.metrics.spectral import SPEC_FFT_SIZES

    min_segment = SPEC_FFT_SIZES[0]  # the fixed validation distance's largest STFT frame
    _need(data.segment >= min_segment, "data.segment", data.segment,
          f">= {min_segment} (the largest frame of the fixed val/spec_loss)")
    if hop_length is not None:
        _need(data.segment % hop_length == 0, "data.segment", data.segment,
              f"a positive multiple of the model's hop ({hop_length}), e.g. "
              f"{max(1, round(data.segment / hop_length)) * hop_length}")
    if isinstance(data, SynthDataConfig):
        _need(data.train_seconds > 0, "data.train_seconds", data.train_seconds, "> 0")
        _need(data.val_seconds > 0, "data.val_seconds", data.val_seconds, "> 0")
        _need(data.clip_seconds * data.sample_rate >= data.segment, "data.clip_seconds", data.clip_seconds,
              f">= one segment ({data.segment / data.sample_rate:.3f} s)")

    for key in ("val_segment", "val_batch_size"):
        value = data.get(key) if isinstance(data, DictConfig) else getattr(data, key, None)
        _need(value is None or value >= 1, f"data.{key}", value, ">= 1, or null for the training value")
    val_segment = data.get("val_segment") if isinstance(data, DictConfig) else getattr(data, "val_segment", None)
    if val_segment is not None:
        _need(val_segment >= min_segment, "data.val_segment", val_segment,
              f">= {min_segment} (the largest frame of the fixed val/spec_loss)")
        if hop_length is not None:
            _need(val_segment % hop_length == 0, "data.val_segment", val_segment,
                  f"a positive multiple of the model's hop ({hop_length})")
    _need(data.val_max_crops is None or data.val_max_crops >= 1, "data.val_max_crops", data.val_max_crops,
          ">= 1, or null for every crop")
    if isinstance(data, FolderDataConfig):
        _need(data.channels in (1, 2), "data.channels", data.channels, "1 or 2")
        _need(0.0 <= data.val_fraction < 1.0, "data.val_fraction", data.val_fraction, "[0, 1)")
        _need(data.val_fraction > 0 or data.val_path is not None, "data.val_fraction", data.val_fraction,
              "> 0 unless data.val_path names a validation folder")
        _need(data.dtype in ("int16", "float16", "float32"), "data.dtype", data.dtype, "int16, float16 or float32")
        _need(data.normalize in ("none", "peak", "loudness"), "data.normalize", data.normalize,
              "none, peak or loudness")
        _need(data.prepare_workers >= 0, "data.prepare_workers", data.prepare_workers, ">= 0 (0: one per core)")
        _need(bool(data.extensions), "data.extensions", data.extensions, "a non-empty list")
        for key in ("path", "val_path"):
            folder = data[key] if isinstance(data, DictConfig) else getattr(data, key)
            if folder is not None and not Path(str(folder)).expanduser().is_dir():
                what = "not a directory" if Path(str(folder)).expanduser().exists() else "no such directory"
                raise ConfigError(f"data.{key}={str(folder)!r}: {what}")
    data_channels = data.get("channels", 1) if isinstance(data, DictConfig) else getattr(data, "channels", 1)
    if audio is not None and audio != int(data_channels):
        channels = cfg.model.channels
        key, value = ("model.channels", channels) if isinstance(channels, int) else ("model.channels[0]", channels[0])
        takes = "" if value == audio else f" ({audio}-channel audio)"
        raise ConfigError(f"{key}={value}{takes} does not match data.channels={data_channels}: "
                          "the model's input must have the dataset's channel count")


def _check_task(task: DictConfig) -> None:
    if "semitones" in task:
        semis = list(task.semitones)
        _need(len(semis) > 0 and all(s != 0 and abs(s) <= 12 for s in semis), "task.semitones", semis,
              "a non-empty list of non-zero integers within ±12")
    bank = task.get("lowpass_bank")
    _need(bank is None or int(bank) >= 1, "task.lowpass_bank", bank, ">= 1, or null for exact cutoffs")


def _number(key: str, value: Any, kind: type = float) -> Any:
    """`value` as a float (or int); ConfigError naming `key` when it is not one (`optim.lr=abc`)."""
    try:
        return kind(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{key}={value!r} is not a number (e.g. {key}=1e-3)") from None


def _check_optim(optim: DictConfig) -> None:
    lr = None if optim.get("lr") is None else _number("optim.lr", optim.get("lr"))
    _need(lr is not None and math.isfinite(lr) and lr > 0, "optim.lr", lr, "> 0")
    for key in ("adamw_lr", "momentum"):
        if key in optim:
            value = _number(f"optim.{key}", optim[key])
            upper = 1.0 if key == "momentum" else math.inf
            _need(0 < value < upper, f"optim.{key}", value, "(0, 1)" if key == "momentum" else "> 0")
    wd = _number("optim.weight_decay", optim.get("weight_decay", 0.0))
    _need(wd >= 0, "optim.weight_decay", wd, ">= 0")
    clip = optim.get("grad_clip")
    _need(clip is None or _number("optim.grad_clip", clip) > 0, "optim.grad_clip", clip,
          "> 0, or null for no clipping")
    sched = optim.get("scheduler", {})
    warm = _number("optim.scheduler.warmup_steps", sched.get("warmup_steps", 0), int)
    _need(warm >= 0, "optim.scheduler.warmup_steps", warm, ">= 0")
    decay = sched.get("decay", "constant")
    _need(decay in ("constant", "cosine"), "optim.scheduler.decay", decay, "constant or cosine")
    floor = _number("optim.scheduler.min_lr_ratio", sched.get("min_lr_ratio", 0.0))
    _need(0.0 <= floor <= 1.0, "optim.scheduler.min_lr_ratio", floor, "[0, 1]")


def _check_loss(loss: DictConfig) -> dict[str, LossKind]:
    """Check the weights; return each term's declared kind."""
    kinds = {name: loss_kind(_imported(f"loss.terms.{name}._target_", str(term._target_)))
             for name, term in loss.terms.items()}
    for name, term in loss.terms.items():
        w = term.get("weight")
        _need(w is not None and float(w) >= 0, f"loss.terms.{name}.weight", w, ">= 0")
    _need(any(float(loss.terms[n].weight) > 0 for n, k in kinds.items() if not k.needs_discriminator),
          "loss.terms", "all reconstruction weights 0", "at least one reconstruction term with weight > 0")
    return kinds


def validate_recipe(cfg: DictConfig, kinds: dict[str, LossKind], variational: bool) -> None:
    """Check the recipe's values, and that it can train the model and loss it is given."""
    recipe = _typed("recipe", cfg.recipe)
    has_discriminator = bool(cfg.get("discriminator"))
    two_phase = isinstance(recipe, VaeGanRecipeConfig)
    if not two_phase and (has_discriminator or variational):
        why = "discriminator is set" if has_discriminator else f"model {cfg.model._target_} is a VAE"
        name = str(cfg.recipe.get("_target_")).rsplit(".", 1)[-1]
        raise ConfigError(f"recipe {name} cannot train this run ({why}): use recipe=vae_gan"
                          + (", or discriminator=none" if has_discriminator else
                             ", or a whole RAVE recipe: experiment=rave_v2 (or rave_v2_small, rave_v3)"))
    if two_phase:
        _need(recipe.phase1_steps is None or recipe.phase1_steps >= 0, "recipe.phase1_steps", recipe.phase1_steps,
              ">= 0, or null for half of trainer.max_steps")
        _need(recipe.beta_warmup_steps >= 0, "recipe.beta_warmup_steps", recipe.beta_warmup_steps, ">= 0")
        for key in ("beta_start", "beta_end"):
            value = getattr(recipe, key)
            _need(math.isfinite(value) and value > 0, f"recipe.{key}", value, "> 0 (the warm-up is in log space)")
        _need(recipe.d_every >= 2, "recipe.d_every", recipe.d_every,
              ">= 2 (1 discriminator step in d_every; the generator needs the others)")
    if has_discriminator:
        adversarial = [n for n, k in kinds.items() if k is LossKind.ADVERSARIAL]
        if not any(float(cfg.loss.terms[n].weight) > 0 for n in adversarial):
            raise ConfigError("discriminator is set but loss.terms has no adversarial term with weight > 0: use "
                              "loss=rave or loss=dac_gan, or discriminator=none for no phase 2")


def validate_metrics(node: Any) -> None:
    """Check the metrics section (typed by MetricsConfig); raise ConfigError naming the key."""
    metrics = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(MetricsConfig), node))
    unknown = [m for m in metrics.eval if m not in EVAL_METRICS]
    _need(not unknown, "metrics.eval", metrics.eval, f"a list of {', '.join(EVAL_METRICS)}")
    _need(metrics.embedder in ("clap", "logmel"), "metrics.embedder", metrics.embedder, "clap or logmel")
    _need(metrics.batch_size >= 1, "metrics.batch_size", metrics.batch_size, ">= 1")
    from audiolab.losses.cdpam import cdpam_missing

    if metrics.val_cdpam and (missing := cdpam_missing()):
        raise ConfigError(f"metrics.val_cdpam=true: {missing}")
    _need(metrics.clap.hop_seconds > 0, "metrics.clap.hop_seconds", metrics.clap.hop_seconds, "> 0")
    _need(metrics.kid.n_subsets >= 1, "metrics.kid.n_subsets", metrics.kid.n_subsets, ">= 1")
    _need(metrics.kid.subset_size >= 2, "metrics.kid.subset_size", metrics.kid.subset_size, ">= 2")
    checkpoint = metrics.clap.checkpoint
    if metrics.eval and metrics.embedder == "clap" and checkpoint and not Path(checkpoint).is_file():
        # Set but wrong is a mistake to catch before training; unset only skips the metrics (see evaluate).
        raise ConfigError(f"metrics.clap.checkpoint={checkpoint!r}: no such file")
