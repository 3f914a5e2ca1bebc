"""Speech synthesised offline with eSpeak NG, through ``ctypes``: the ``espeakng-loader`` wheel
ships ``libespeak-ng.so`` and its voice data, so ``pip`` alone brings a speech synthesiser (the
maintained Python wrappers either shell out to an ``espeak`` binary or need a system library).
"""
from __future__ import annotations

import ctypes
import functools
import itertools
import threading
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np

__all__ = ["ACCENTS", "FOREIGN_VOICES", "PITCHES", "RATES", "VARIANTS", "Speaker", "SpeechSynthesizer", "max_speakers",
           "resample", "speakers"]

_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: AUDIO_OUTPUT_SYNCHRONOUS
_RATE, _PITCH, _RANGE = 1, 3, 4  # espeak_PARAMETER
_POS_CHARACTER = 1
_CHARS_UTF8, _PHONEMES_IPA = 1, 0x02  # espeak_TextToPhonemes: textmode, phonememode
_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


@dataclass(frozen=True)
class Speaker:
    """One synthetic speaker: an eSpeak voice (language or accent, ``+variant``), a speaking
    rate in words per minute, and a pitch and pitch range (0-100)."""

    voice: str
    rate: int
    pitch: int
    pitch_range: int = 50

    @property
    def name(self) -> str:
        return f"{self.voice}_r{self.rate}_p{self.pitch}_g{self.pitch_range}"


ACCENTS = ("en", "en-us", "en-gb-x-rp", "en-gb-scotland", "en-029", "en-gb-x-gbclan", "en-gb-x-gbcwmd", "en-us-nyc")
"""eSpeak NG's English accents."""
FOREIGN_VOICES = ("de", "fr", "es", "it", "nl", "pl", "pt", "sv", "hi", "ru")
"""Non-English voices, which read the English words with their own phonetics."""
VARIANTS = ("", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7", "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt",
            "+klatt2", "+croak")
RATES = (120, 145, 170, 200)
PITCHES = (25, 40, 55, 70, 85)

def speakers(count: int, seed: int, foreign_share: float = 0.25, voices: Optional[Sequence[str]] = None) -> list[Speaker]:
    """``count`` distinct speakers drawn without replacement from accents (or non-English voices,
    about ``foreign_share`` of them) x variants x rates x pitches; at most ``max_speakers``."""
    if count > max_speakers(foreign_share, voices):
        raise ValueError(f"{count} speakers asked for; eSpeak NG's pool holds {max_speakers(foreign_share, voices)}")
    rng = np.random.default_rng(seed)
    english = list(itertools.product(voices or ACCENTS, VARIANTS, RATES, PITCHES))
    foreign = [] if voices else list(itertools.product(FOREIGN_VOICES, VARIANTS, RATES, PITCHES))
    n_foreign = min(len(foreign), round(count * foreign_share))
    picked = [english[i] for i in rng.choice(len(english), min(count - n_foreign, len(english)), replace=False)]
    picked += [foreign[i] for i in rng.choice(len(foreign), n_foreign, replace=False)] if n_foreign else []
    return [Speaker(voice + variant, rate, pitch, int(rng.integers(20, 80))) for voice, variant, rate, pitch in picked]


def max_speakers(foreign_share: float = 0.25, voices: Optional[Sequence[str]] = None) -> int:
    """The most speakers ``speakers`` can draw with the non-English share kept."""
    english = len(voices or ACCENTS) * len(VARIANTS) * len(RATES) * len(PITCHES)
    foreign = 0 if voices else len(FOREIGN_VOICES) * len(VARIANTS) * len(RATES) * len(PITCHES)
    count = english + foreign
    while count - min(foreign, round(count * foreign_share)) > english:
        count -= 1
    return count


def resample(wave: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """``wave`` (float, any shape with time last) from ``rate_in`` to ``rate_out`` Hz with SciPy's
    polyphase filter (SciPy comes with scikit-learn)."""
    if rate_in == rate_out:
        return wave.astype(np.float32)
    from scipy.signal import resample_poly

    up, down = resample_ratio(rate_in, rate_out)
    return resample_poly(wave, up, down, axis=-1).astype(np.float32)


MAX_RESAMPLE_FACTOR = 1000


def resample_ratio(rate_in: int, rate_out: int) -> tuple[int, int]:
    """``(up, down)`` for ``resample_poly``: ``rate_out / rate_in`` as the nearest fraction with
    both terms at most ``MAX_RESAMPLE_FACTOR`` (the filter's length and the work grow with them:
    383,999 Hz exactly would take 16,000 / 383,999), off by at most a few parts per million."""
    from fractions import Fraction

    ratio = Fraction(rate_out, rate_in)
    if ratio.numerator <= MAX_RESAMPLE_FACTOR and ratio.denominator <= MAX_RESAMPLE_FACTOR:
        return ratio.numerator, ratio.denominator
    if ratio < 1:
        best = ratio.limit_denominator(MAX_RESAMPLE_FACTOR)  # numerator <= denominator
        return best.numerator, best.denominator
    inverse = (1 / ratio).limit_denominator(MAX_RESAMPLE_FACTOR)  # upsampling: through the inverse
    return inverse.denominator, inverse.numerator


class SpeechSynthesizer:
    """eSpeak NG in this process (one at a time: the library keeps global state).

    ``say(text, speaker)`` returns float32 samples in [-1, 1] at ``rate`` (16 kHz by default;
    eSpeak speaks at 22,050 Hz and the wave is resampled).
    """

    _lock = threading.Lock()

    def __init__(self, rate: int = 16000) -> None:
        try:
            import espeakng_loader
        except ImportError:
            raise ImportError("speech synthesis needs eSpeak NG: pip install 'dszoo[speech]'") from None
        self.rate = rate
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._native_rate = self._lib.espeak_Initialize(_SYNCHRONOUS, 0, espeakng_loader.get_data_path().encode(), 0)
        if self._native_rate <= 0:
            raise RuntimeError(f"eSpeak NG did not start (espeak_Initialize returned {self._native_rate})")
        self._set_rand_seed = getattr(self._lib, "espeak_ng_SetRandSeed", None)  # eSpeak NG 1.52 on
        if self._set_rand_seed is not None:
            self._set_rand_seed.argtypes = [ctypes.c_long]
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # kept referenced: the library calls it later
        self._lib.espeak_SetSynthCallback(self._callback)

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if count > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0

    def voices_available(self, names: list[str]) -> list[str]:
        """Those of ``names`` that eSpeak accepts."""
        return [n for n in names if self._lib.espeak_SetVoiceByName(n.encode()) == 0]

    def phonemes(self, text: str, voice: str) -> str:
        """``text`` as eSpeak NG's IPA in ``voice``'s language (``en-us``, ``en``: British), stress
        marks included: what Kokoro's own front end (kokoro-js) feeds its model."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {voice!r}")
            convert = self._lib.espeak_TextToPhonemes
            convert.restype = ctypes.c_char_p
            convert.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
            left, out = ctypes.c_char_p(text.encode()), []
            while left.value:  # a clause a call
                out.append(convert(ctypes.byref(left), _CHARS_UTF8, _PHONEMES_IPA).decode())
        return " ".join(out)

    def say(self, text: str, speaker: Speaker) -> np.ndarray:
        """The waveform of ``speaker`` saying ``text``."""
        with self._lock:
            if self._lib.espeak_SetVoiceByName(speaker.voice.encode()) != 0:
                raise ValueError(f"eSpeak NG has no voice {speaker.voice!r}")
            for parameter, value in ((_RATE, speaker.rate), (_PITCH, speaker.pitch), (_RANGE, speaker.pitch_range)):
                self._lib.espeak_SetParameter(parameter, int(value), 0)
            self._chunks = []
            if self._set_rand_seed is not None:  # the breathy variants' noise: the same every run
                self._set_rand_seed(0)
            data = text.encode()
            status = self._lib.espeak_Synth(data, len(data) + 1, 0, _POS_CHARACTER, 0, 0, None, None)
            self._lib.espeak_Synchronize()
            if status != 0 or not self._chunks:
                raise RuntimeError(f"eSpeak NG could not say {text!r} with {speaker.name} (status {status})")
            wave = np.concatenate(self._chunks).astype(np.float32) / 32768.0
        return resample(wave, self._native_rate, self.rate)


_SYNTH: Optional[SpeechSynthesizer] = None


def synthesizer(rate: int = 16000) -> SpeechSynthesizer:
    """The process's one ``SpeechSynthesizer`` (eSpeak is initialised once)."""
    global _SYNTH
    if _SYNTH is None or _SYNTH.rate != rate:
        _SYNTH = SpeechSynthesizer(rate)
    return _SYNTH


def loud_part(wave: np.ndarray, fraction: float = 0.02) -> np.ndarray:
    """``wave`` from its first to its last sample above ``fraction`` of its peak (34 dB below it by
    default): a word's speech without the silence around it, weak consonants kept (at 26 dB the
    burst of "up" and the /f/ of "off" fall away), as the generator trims its clips."""
    loud = np.flatnonzero(np.abs(wave) > fraction * max(float(np.abs(wave).max()) if len(wave) else 0.0, 1e-9))
    return wave[loud[0]:loud[-1] + 1] if len(loud) else wave[:0]


@functools.lru_cache(maxsize=None)
def reference_seconds(word: str) -> float:
    """How long eSpeak NG's plain ``en-us`` voice (175 words a minute) speaks ``word``: the
    yardstick a clip's length is checked against (``engines.clip_problem``)."""
    return len(loud_part(synthesizer(16000).say(word, Speaker("en-us", 175, 50)))) / 16000
