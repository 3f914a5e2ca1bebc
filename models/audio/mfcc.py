"""The keyword-spotting front end: 1 s of 16 kHz audio -> the DS-CNN's 49 x 10 MFCC input.

Two references, each reproduced formula by formula (TensorFlow is not a dependency; the tests
hold reference values it computed, with the script that made them):

- ``mlperf_tiny``: MLPerf Tiny's keyword-spotting training code
  (``benchmark/training/keyword_spotting/get_dataset.py`` in mlcommons/tiny): the wave divided
  by its signed maximum and zero-padded to 16000 samples, ``tf.signal.stft`` (30 ms periodic
  Hann window, 20 ms hop, 512-point FFT, no centring: 49 frames), magnitude,
  ``tf.signal.linear_to_mel_weight_matrix`` (40 bins, 20-4000 Hz, HTK mel, triangles in mel
  space, the DC bin left out), ``log(mel + 1e-6)`` and ``tf.signal.mfccs_from_log_mel_spectrograms``
  (DCT-II times ``rsqrt(2 N)``), the first 10.
- ``arm_kws``: ARM's ML-KWS-for-MCU (Hello Edge, Zhang et al. 2017), TensorFlow's
  ``audio_ops.audio_spectrogram`` (40 ms periodic Hann window, 20 ms stride, 1024-point power
  spectrum) and ``audio_ops.mfcc`` (its own 40-channel filterbank over 20-4000 Hz applied to the
  magnitude, ``log`` floored at 1e-12, DCT-II scaled by ``sqrt(2 / N)``), the first 10; the
  wave as it is, without normalisation.

torchaudio's ``MFCC`` differs from both in every step (dB scale, orthonormal DCT, triangles in
Hz with the DC bin, power, centred frames), and its wheels are built for other torch releases,
so the front end is written here with ``torch.stft``.
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..preprocessing import MFCC_PRESETS, MFCCPreset, trained_front_end

__all__ = ["MFCC", "MFCC_PRESETS", "MFCCPreset", "arm_mel_filterbank", "tf_linear_to_mel_weight_matrix",
           "trained_front_end", "warped_mel"]


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    """HTK's mel scale, as both references use it: 1127 ln(1 + f / 700)."""
    return 1127.0 * torch.log1p(hz / 700.0)


def tf_linear_to_mel_weight_matrix(mel_bins: int, spectrogram_bins: int, sample_rate: int, lower_hz: float,
                                   upper_hz: float) -> torch.Tensor:
    """``tf.signal.linear_to_mel_weight_matrix``: (spectrogram_bins, mel_bins) triangles built
    in mel space over the linear bins, the DC bin's row zero (float64)."""
    linear_hz = torch.linspace(0.0, sample_rate / 2.0, spectrogram_bins, dtype=torch.float64)[1:]
    bins_mel = _hz_to_mel(linear_hz).unsqueeze(1)
    edges = torch.linspace(_hz_to_mel(torch.tensor(lower_hz, dtype=torch.float64)).item(),
                           _hz_to_mel(torch.tensor(upper_hz, dtype=torch.float64)).item(), mel_bins + 2,
                           dtype=torch.float64)
    lower, center, upper = edges[:-2], edges[1:-1], edges[2:]
    rising = (bins_mel - lower) / (center - lower)
    falling = (upper - bins_mel) / (upper - center)
    weights = torch.clamp(torch.minimum(rising, falling), min=0.0)
    return torch.cat([torch.zeros(1, mel_bins, dtype=torch.float64), weights])


def arm_mel_filterbank(mel_bins: int, spectrogram_bins: int, sample_rate: int, lower_hz: float,
                       upper_hz: float) -> torch.Tensor:
    """TensorFlow's ``MfccMelFilterbank`` (``tensorflow/core/kernels/mfcc_mel_filterbank.cc``)
    as a (spectrogram_bins, mel_bins) matrix (float64): each FFT bin between the edges gives
    ``w`` of itself to the channel whose centre lies above it and ``1 - w`` to the next."""
    mel_low = math.log1p(lower_hz / 700.0) * 1127.0
    mel_high = math.log1p(upper_hz / 700.0) * 1127.0
    spacing = (mel_high - mel_low) / (mel_bins + 1)
    centers = [mel_low + spacing * (i + 1) for i in range(mel_bins + 1)]
    hz_per_bin = 0.5 * sample_rate / (spectrogram_bins - 1)
    start, end = int(1.5 + lower_hz / hz_per_bin), int(upper_hz / hz_per_bin)
    matrix = torch.zeros(spectrogram_bins, mel_bins, dtype=torch.float64)
    channel = 0
    for i in range(start, end + 1):
        mel = 1127.0 * math.log1p(i * hz_per_bin / 700.0)
        while channel < mel_bins and centers[channel] < mel:
            channel += 1
        band = channel - 1
        if band >= 0:
            weight = (centers[band + 1] - mel) / (centers[band + 1] - centers[band])
            matrix[i, band] += weight
        else:
            weight = (centers[0] - mel) / (centers[0] - mel_low)
        if band + 1 < mel_bins:
            matrix[i, band + 1] += 1.0 - weight
    return matrix


def _dct_matrix(n_in: int, n_out: int, scale: float) -> torch.Tensor:
    """(n_in, n_out) DCT-II: ``scale * cos(pi k (2n + 1) / (2 N))`` (float64)."""
    n = torch.arange(n_in, dtype=torch.float64).unsqueeze(1)
    k = torch.arange(n_out, dtype=torch.float64).unsqueeze(0)
    return scale * torch.cos(math.pi * k * (2 * n + 1) / (2 * n_in))


class MFCC(nn.Module):
    """Waveforms ``(batch, samples)`` (or ``(samples,)``) at 16 kHz -> ``(batch, 1, 49, 10)`` MFCCs,
    the DS-CNN input, exactly as ``preset`` computes them (``MFCC_PRESETS``). Clips longer than
    1 s are cut, shorter ones zero-padded at the end. Scriptable; runs wherever its buffers are.

    ``mlperf_tiny`` divides each clip by its signed maximum, as the reference does; a clip whose
    maximum is 0 (silence), where the reference would divide by zero, is left as it is, so
    silence gives the log floor instead of NaN.
    """

    def __init__(self, preset: str = "mlperf_tiny") -> None:
        super().__init__()
        if preset not in MFCC_PRESETS:
            raise ValueError(f"unknown MFCC preset {preset!r}; allowed: {', '.join(MFCC_PRESETS)}")
        p = MFCC_PRESETS[preset]
        self.preset = preset
        self.clip_samples, self.hop, self.fft_length = p.clip_samples, p.hop_samples, p.fft_length
        self.window_samples = p.window_samples
        self.normalise_peak = p.normalise_peak
        self.clamp_floor = p.filterbank == "arm_audio_ops"  # audio_ops floors by clamping, tf.signal adds
        self.log_floor = 1e-12 if self.clamp_floor else 1e-6
        bins = p.fft_length // 2 + 1
        # torch.stft centres a window shorter than n_fft; the references put it at the start of
        # each frame and zero-pad the frame at its end, which a zero-padded window reproduces.
        # The periodic Hann window as each reference computes it (tf.signal in float32).
        dtype = torch.float64 if p.double else torch.float32
        n = torch.arange(p.window_samples, dtype=dtype)
        hann = 0.5 - 0.5 * torch.cos(2 * math.pi * n / p.window_samples)
        window = torch.cat([hann, torch.zeros(p.fft_length - p.window_samples, dtype=dtype)])
        make = tf_linear_to_mel_weight_matrix if p.filterbank == "tf_signal" else arm_mel_filterbank
        mel = make(p.mel_bins, bins, p.sample_rate, p.lower_hz, p.upper_hz)
        scale = math.sqrt(2.0 / p.mel_bins)  # tf.signal: 2 x rsqrt(2N); audio_ops: sqrt(2 / N)
        self.register_buffer("window", window, persistent=False)
        self.register_buffer("mel", mel.to(dtype), persistent=False)
        self.register_buffer("dct", _dct_matrix(p.mel_bins, p.coefficients, scale).to(dtype), persistent=False)
        self.tail = p.fft_length - p.window_samples  # zeros after the clip, so its last window fits
        self.frames = 1 + (p.clip_samples - p.window_samples) // p.hop_samples

    def log_mel(self, wave: torch.Tensor, warp: float = 1.0) -> torch.Tensor:
        """The floored log mel energies ``(batch, frames, mel_bins)``, in the compute dtype. A
        clip shorter than a second, even of no samples, is zero-padded (silence), by every preset.
        ``warp`` other than 1 scales the spectrum's frequencies by it first (``warped_mel``)."""
        wave = _waveforms(wave)
        wave = wave.to(self.window.dtype)[:, : self.clip_samples]
        if self.normalise_peak and wave.shape[1]:
            peak = wave.amax(dim=1, keepdim=True)
            wave = wave / torch.where(peak == 0, torch.ones_like(peak), peak)
        wave = nn.functional.pad(wave, (0, self.clip_samples - wave.shape[1] + self.tail))
        spec = torch.stft(wave, self.fft_length, self.hop, window=self.window, center=False, return_complex=True)
        # (batch, frames, bins); audio_ops computes the power spectrum and its filterbank takes the
        # square root again, so both references weight the magnitude
        magnitude = spec.abs().transpose(1, 2)
        weights = self.mel if warp == 1.0 else warped_mel(self.mel, warp)
        if self.clamp_floor:
            mel = torch.clamp(magnitude @ weights, min=self.log_floor)
        else:
            mel = magnitude @ weights + self.log_floor
        return torch.log(mel)

    def forward(self, wave: torch.Tensor, warp: float = 1.0) -> torch.Tensor:
        """The MFCCs of ``wave``; ``warp`` (the ``vtlp`` augmentation) scales its frequencies."""
        wave = _waveforms(wave)
        out_dtype = wave.dtype if wave.dtype in (torch.float32, torch.float64) else torch.float32
        return (self.log_mel(wave, warp) @ self.dct).unsqueeze(1).to(out_dtype)


def warped_mel(mel: torch.Tensor, warp: float) -> torch.Tensor:
    """The filterbank ``mel`` ``(bins, mel_bins)`` for a spectrum whose frequencies are scaled by
    ``warp``: vocal tract length perturbation (Jaitly & Hinton 2013), done on the filters (each
    filter reads bin ``warp * k`` where it read bin ``k``), so nothing is resynthesised."""
    bins = mel.shape[0]
    source = torch.arange(bins, dtype=mel.dtype, device=mel.device) * warp
    low = source.floor().long().clamp(0, bins - 1)
    high = (low + 1).clamp(max=bins - 1)
    frac = (source - low.to(mel.dtype)).unsqueeze(1)
    out = mel[low] * (1 - frac) + mel[high] * frac
    return out * (source < bins - 1).to(mel.dtype).unsqueeze(1)


def _waveforms(wave: torch.Tensor) -> torch.Tensor:
    """``wave`` as a ``(batch, samples)`` float tensor, or a ``TypeError``/``ValueError`` saying
    what was expected (a NumPy array or a list is named, with the conversion to use)."""
    if not torch.jit.is_scripting():
        _require_tensor(wave)
    if wave.dim() == 1:
        wave = wave.unsqueeze(0)
    if wave.dim() != 2 or not wave.is_floating_point():
        raise ValueError(f"expected float waveforms of shape (batch, samples), got {wave.dtype} of shape "
                         f"{list(wave.shape)}")
    if wave.shape[0] == 0:
        raise ValueError("expected at least one waveform, got a batch of 0")
    return wave


def _require_tensor(wave: Any) -> None:
    if not isinstance(wave, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of waveforms (batch, samples), got {type(wave).__name__}; convert "
                        "it with torch.as_tensor(wave, dtype=torch.float32)")
