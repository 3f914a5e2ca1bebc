"""Augmentations that teach a keyword model the words rather than the voice, each one lever that
``--augment`` turns on by name. They act on one 16 kHz clip (a float32 tensor of 16,000
samples) and keep its length and dtype; ``spec_augment`` acts on its MFCCs.

Written here in torch rather than taken from a library: audiomentations (the maintained NumPy
one) costs 2.2 ms a clip for ``PitchShift`` and 1.0 ms for ``SevenBandParametricEQ`` on this
2-core machine, more than the whole training step of a clip (about 0.6 ms), and brings librosa
and numba; torch-audiomentations needs torchaudio, which has no wheel for this torch. The ones
here cost 1.2 ms a clip together, with all on (FFTs of the clip: ``eq`` 0.5 ms, ``reverb``
1.0 ms half the time).

- ``shift``: a time shift of up to 100 ms (Hello Edge, MLPerf Tiny).
- ``noise``: background noise with probability 0.8 at a volume from U(0, 0.1) (the same).
- ``snr``: background noise with probability 0.8 at a signal-to-noise ratio from U(0, 30) dB.
- ``speed``: speed perturbation by U(0.85, 1.15), tempo, pitch and formants together
  (Ko et al. 2015), which also stands in for a vocal-tract-length change.
- ``gain``: a level from U(-20, +10) dB, clipped to [-1, 1] as an overdriven input is.
- ``eq``: a random equaliser (three bell bands of +-12 dB) and, half the time, a band limit
  (high-pass 50-400 Hz, low-pass 3-7 kHz): microphones, phones, loudspeakers.
- ``reverb``: a synthesised room impulse response (exponentially decaying noise, RT60 from
  U(0.1, 0.8) s, a direct path and a random direct-to-reverberant ratio) with probability 0.5.
- ``context``: with probability 0.5, part of another training clip's word at the window's
  edge (moved 0.6-1 s away, at 0.2-1x the level), as neighbouring words fall into a 1 s
  window when a recording is scanned.
- ``vtlp``: vocal tract length perturbation (Jaitly & Hinton 2013), the spectrum's frequencies
  scaled by U(0.88, 1.12) with the tempo kept: formants and pitch move, as between speakers of
  different size; applied in the MFCC's filterbank (``mfcc.warped_mel``), so nothing is resynthesised.
- ``specaugment``: two time masks of up to 8 frames and one mask of up to 2 cepstral
  coefficients on the MFCCs (Park et al. 2019).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch

__all__ = ["LEVERS", "PRESETS", "Augmenter", "parse_levers"]

SAMPLE_RATE = 16000
LEVERS = ("shift", "noise", "snr", "speed", "vtlp", "gain", "eq", "reverb", "specaugment", "context")
PRESETS = {"none": (), "basic": ("shift", "noise"), "voices": ("shift", "snr", "speed", "context"),
           "all": ("shift", "snr", "speed", "vtlp", "gain", "eq", "reverb", "specaugment", "context")}
"""Named sets of levers: ``basic`` is what the references train with; ``voices`` the levers that
helped on engines never heard (the ablation in docs/keyword_spotting_experiments.md: ``gain``, ``eq``,
``reverb`` and ``specaugment`` each cost keywords there); ``all`` every lever."""


def parse_levers(text: str) -> tuple[str, ...]:
    """``--augment``'s value: a preset name, or levers joined by commas (``-lever`` removes one
    from a preset given first: ``voices,-reverb``)."""
    levers: list[str] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        name = part.lstrip("-")
        if part in PRESETS:
            levers += [lv for lv in PRESETS[part] if lv not in levers]
        elif name in LEVERS:
            if part.startswith("-"):
                levers = [lv for lv in levers if lv != name]
            elif name not in levers:
                levers.append(name)
        else:
            raise ValueError(f"--augment {text}: {part!r} is neither a preset ({', '.join(PRESETS)}) nor a lever "
                             f"({', '.join(LEVERS)})")
    if "noise" in levers and "snr" in levers:
        raise ValueError(f"--augment {text}: noise and snr both add background noise; choose one")
    return tuple(levers)


@dataclass
class Augmenter:
    """The levers ``levers`` with their random draws from ``generator``."""

    levers: tuple[str, ...]
    generator: torch.Generator
    noises: tuple[torch.Tensor, ...] = ()
    others: Optional[torch.Tensor] = None  # (clips, samples): the training clips ``context`` borrows from

    def _uniform(self, low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=self.generator))

    def _chance(self, p: float) -> bool:
        return float(torch.rand((), generator=self.generator)) < p

    def _noise_crop(self) -> torch.Tensor:
        noise = self.noises[int(torch.randint(len(self.noises), (), generator=self.generator))]
        start = int(torch.randint(len(noise) - SAMPLE_RATE + 1, (), generator=self.generator))
        return noise[start:start + SAMPLE_RATE]

    def wave(self, wave: torch.Tensor, silence: bool = False) -> torch.Tensor:
        """One clip augmented by every lever on (silence clips get only background noise, at
        any volume, as the references make them)."""
        if silence:
            return wave + self._uniform(0, 1) * self._noise_crop() if self.noises else wave
        on = self.levers
        if "context" in on and self.others is not None and len(self.others) and self._chance(0.5):
            other = self.others[int(torch.randint(len(self.others), (), generator=self.generator))].float()
            away = int(self._uniform(0.6, 1.0) * SAMPLE_RATE) * (1 if self._chance(0.5) else -1)
            wave = wave + self._uniform(0.2, 1.0) * shift(other, away)
        if "speed" in on:
            wave = speed(wave, self._uniform(0.85, 1.15))
        if "shift" in on:
            wave = shift(wave, int(round(self._uniform(-0.1, 0.1) * SAMPLE_RATE)))
        if "reverb" in on and self._chance(0.5):
            wave = reverb(wave, self._uniform(0.1, 0.8), self._uniform(-3, 12), self.generator)
        if "eq" in on:
            wave = equalise(wave, self.generator, band_limit=self._chance(0.5))
        if self.noises and "noise" in on and self._chance(0.8):
            wave = wave + self._uniform(0, 0.1) * self._noise_crop()
        if self.noises and "snr" in on and self._chance(0.8):
            wave = add_noise(wave, self._noise_crop(), self._uniform(0, 30))
        if "gain" in on:
            wave = wave * 10 ** (self._uniform(-20, 10) / 20)
        return torch.clamp(wave, -1.0, 1.0)

    def warp(self) -> float:
        """The frequency scale of the next clip's MFCCs: drawn when ``vtlp`` is on, else 1."""
        return self._uniform(0.88, 1.12) if "vtlp" in self.levers else 1.0

    def features(self, mfcc: torch.Tensor) -> torch.Tensor:
        """SpecAugment's masks on ``(1, frames, coefficients)`` MFCCs when ``specaugment`` is on."""
        if "specaugment" not in self.levers:
            return mfcc
        return spec_augment(mfcc, self.generator)


def shift(wave: torch.Tensor, samples: int) -> torch.Tensor:
    """``wave`` moved by ``samples`` (later when positive), zeros coming in."""
    out = torch.zeros_like(wave)
    if samples >= 0:
        out[samples:] = wave[:len(wave) - samples]
    else:
        out[:samples] = wave[-samples:]
    return out


def speed(wave: torch.Tensor, factor: float) -> torch.Tensor:
    """``wave`` played ``factor`` times faster (linear interpolation), then cut or zero-padded
    back to its length around its loudest part."""
    n = len(wave)
    resampled = torch.nn.functional.interpolate(wave[None, None], size=max(1, round(n / factor)), mode="linear",
                                                align_corners=False)[0, 0]
    if len(resampled) >= n:
        centre = int((resampled.abs() * torch.arange(len(resampled))).sum() / resampled.abs().sum().clamp_min(1e-12))
        start = min(max(0, centre - n // 2), len(resampled) - n)
        return resampled[start:start + n].contiguous()
    out = torch.zeros_like(wave)
    offset = (n - len(resampled)) // 2
    out[offset:offset + len(resampled)] = resampled
    return out


def _spectrum_gain(freqs: torch.Tensor, generator: torch.Generator, band_limit: bool) -> torch.Tensor:
    """A random smooth equaliser curve over ``freqs`` (Hz): three bells in log frequency, and
    optionally fourth-order high- and low-pass magnitudes; computed on 129 points and
    interpolated (the curve is smooth; this is most of the cost otherwise)."""
    def draw(low: float, high: float) -> float:
        return low + (high - low) * float(torch.rand((), generator=generator))

    coarse = torch.linspace(0, float(freqs[-1]), 129)
    octaves = torch.log2(coarse.clamp_min(20.0))
    gain_db = torch.zeros_like(coarse)
    for _ in range(3):
        centre, width, db = math.log2(draw(100.0, 7000.0)), draw(0.5, 2.0), draw(-12.0, 12.0)
        gain_db += db * torch.exp(-0.5 * ((octaves - centre) / (width / 2)) ** 2)
    gain = 10 ** (gain_db / 20)
    if band_limit:
        high_pass, low_pass = draw(50.0, 400.0), draw(3000.0, 7000.0)
        gain = gain / torch.sqrt(1 + (high_pass / coarse.clamp_min(1.0)) ** 8) / torch.sqrt(1 + (coarse / low_pass) ** 8)
    return torch.nn.functional.interpolate(gain[None, None], size=len(freqs), mode="linear", align_corners=True)[0, 0]


def equalise(wave: torch.Tensor, generator: torch.Generator, band_limit: bool = False) -> torch.Tensor:
    """``wave`` through a random equaliser (``_spectrum_gain``, zero phase, over a power-of-two
    FFT), its RMS kept."""
    n = 1 << (len(wave) - 1).bit_length()
    spectrum = torch.fft.rfft(wave, n)
    freqs = torch.fft.rfftfreq(n, 1 / SAMPLE_RATE)
    out = torch.fft.irfft(spectrum * _spectrum_gain(freqs, generator, band_limit), n=n)[:len(wave)]
    return out * (wave.norm() / out.norm().clamp_min(1e-12))


def room_impulse_response(rt60: float, generator: torch.Generator) -> torch.Tensor:
    """A synthetic room impulse response: Gaussian noise decaying by 60 dB in ``rt60`` seconds
    (Schroeder's model of a diffuse tail), without its direct path, unit energy."""
    t = torch.arange(int(rt60 * SAMPLE_RATE)) / SAMPLE_RATE
    tail = torch.randn(len(t), generator=generator) * torch.exp(-6.908 * t / rt60)
    return tail / tail.norm().clamp_min(1e-12)


def reverb(wave: torch.Tensor, rt60: float, direct_to_reverberant_db: float, generator: torch.Generator) -> torch.Tensor:
    """``wave`` in a synthetic room: its direct sound plus the tail of ``room_impulse_response``
    at ``direct_to_reverberant_db`` below it, cut to its length, its RMS kept."""
    tail = room_impulse_response(rt60, generator)
    n = 1 << (len(wave) + len(tail) - 1).bit_length()
    wet = torch.fft.irfft(torch.fft.rfft(wave, n) * torch.fft.rfft(tail, n), n)[:len(wave)]
    out = wave + wet * 10 ** (-direct_to_reverberant_db / 20)
    return out * (wave.norm() / out.norm().clamp_min(1e-12))


def add_noise(wave: torch.Tensor, noise: torch.Tensor, snr_db: float) -> torch.Tensor:
    """``wave`` plus ``noise`` scaled to ``snr_db`` (powers over the whole clip, as
    audiomentations' ``AddBackgroundNoise`` measures them)."""
    signal, power = wave.pow(2).mean(), noise.pow(2).mean().clamp_min(1e-12)
    return wave + noise * torch.sqrt(signal / power / 10 ** (snr_db / 10))


def spec_augment(mfcc: torch.Tensor, generator: torch.Generator, time_masks: int = 2, max_frames: int = 8,
                 max_coefficients: int = 2) -> torch.Tensor:
    """SpecAugment's time and frequency masking (Park et al. 2019) on ``(1, frames, coefficients)``
    MFCCs: masked frames take each coefficient's mean over the clip; one band of up to
    ``max_coefficients`` coefficients (never the energy term, coefficient 0) is zeroed."""
    out = mfcc.clone()
    frames, coefficients = out.shape[-2:]
    mean = out.mean(dim=-2, keepdim=True)
    for _ in range(time_masks):
        width = int(torch.randint(max_frames + 1, (), generator=generator))
        start = int(torch.randint(frames - width + 1, (), generator=generator))
        out[..., start:start + width, :] = mean
    width = int(torch.randint(max_coefficients + 1, (), generator=generator))
    start = 1 + int(torch.randint(coefficients - 1 - width + 1, (), generator=generator))
    out[..., start:start + width] = 0.0
    return out


def levers_text(levers: Optional[tuple[str, ...]]) -> str:
    """How a run's levers read in its description."""
    return ",".join(levers) if levers else "none"
