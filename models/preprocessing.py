"""What input a model expects, in the terms its weights were trained with: for images timm's
``pretrained_cfg`` fields (input size, interpolation, crop, mean and std: ``ZooNet.pretrained_cfg``),
for the keyword spotters the MFCC front end they were trained on (the settings of each preset
here; ``dszoo.audio.MFCC`` computes them). Checkpoints, spotter files and exported models record
it with ``input_spec``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

__all__ = ["MFCC_PRESETS", "MFCCPreset", "input_spec", "trained_front_end"]


@dataclass(frozen=True)
class MFCCPreset:
    """One reference's front-end settings."""

    sample_rate: int
    clip_samples: int
    window_samples: int
    hop_samples: int
    fft_length: int
    mel_bins: int
    lower_hz: float
    upper_hz: float
    coefficients: int
    normalise_peak: bool  # divide the wave by its (signed) maximum first
    filterbank: str  # "tf_signal" or "arm_audio_ops"
    double: bool  # audio_ops computes its spectrogram and MFCCs in float64, tf.signal in float32


MFCC_PRESETS: dict[str, MFCCPreset] = {
    "mlperf_tiny": MFCCPreset(16000, 16000, 480, 320, 512, 40, 20.0, 4000.0, 10, True, "tf_signal", False),
    "arm_kws": MFCCPreset(16000, 16000, 640, 320, 1024, 40, 20.0, 4000.0, 10, False, "arm_audio_ops", True),
    # MLPerf Tiny's computation, its 40 mel bands spread over 20-3,400 Hz instead of 20-4,000 Hz
    # (docs/keyword_spotting_experiments.md, the front end's band)
    "narrowband": MFCCPreset(16000, 16000, 480, 320, 512, 40, 20.0, 3400.0, 10, True, "tf_signal", False),
    # narrowband without dividing each clip by its peak: every frame its own 30 ms alone, so a
    # stream computes it a hop at a time (dszoo.audio.streaming; train ds_cnn_s_stream with it)
    "narrowband_stream": MFCCPreset(16000, 16000, 480, 320, 512, 40, 20.0, 3400.0, 10, False, "tf_signal", False),
}


def trained_front_end(checkpoint: dict, source: str = "the checkpoint") -> str:
    """The ``MFCC_PRESETS`` name a model was trained on: a spotter file's ``mfcc_preset``, a
    ``dszoo-train`` checkpoint's ``--mfcc``, ``mlperf_tiny`` for files that name none; a name
    dszoo has no preset for is a ``ValueError`` naming ``source``."""
    config = checkpoint.get("config")
    name = checkpoint.get("mfcc_preset") or (config.get("mfcc") if isinstance(config, dict) else None) or "mlperf_tiny"
    if not isinstance(name, str) or name not in MFCC_PRESETS:
        raise ValueError(f"{source}: trained on the MFCC front end {name!r}, which dszoo does not have; allowed: "
                         f"{', '.join(MFCC_PRESETS)}")
    return name


IMAGE_FIELDS = ("input_size", "interpolation", "crop_pct", "crop_mode", "mean", "std")
"""The ``pretrained_cfg`` fields that say how an image becomes the model's input (timm's names)."""


def input_spec(pretrained_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """How to turn raw input into what a model with this ``pretrained_cfg`` expects, as plain
    JSON values: an MFCC-fed model's front end (``{"mfcc": preset, ...}`` with its sample rate and
    clip length), else the image fields (pixels scaled to 0-1, resized and cropped by
    ``interpolation`` and ``crop_pct``, then normalised by ``mean`` and ``std`` per channel)."""
    preset = pretrained_cfg.get("mfcc")
    if preset is not None:
        p = MFCC_PRESETS[preset]
        return {"mfcc": preset, "sample_rate": p.sample_rate, "clip_samples": p.clip_samples,
                "input_size": list(pretrained_cfg["input_size"])}
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in pretrained_cfg.items() if k in IMAGE_FIELDS}
