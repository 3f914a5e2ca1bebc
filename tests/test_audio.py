"""Keyword spotting: the MFCC front end against TensorFlow's, the Speech Commands rules, the
synthesised stand-in, and a tiny run from WAV files to a spotted word."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_in_process
from dszoo import MFCC, create_model
from dszoo.audio.make_data import generate_speech_data, speaker_id, speakers
from dszoo.audio.mfcc import MFCC_PRESETS, tf_linear_to_mel_weight_matrix
from dszoo.audio.speech_commands import (BACKGROUND_NOISE, KEYWORDS, SILENCE, UNKNOWN, _index, build_speech_commands,
                                          read_wav, which_set)

FIXTURE = np.load(Path(__file__).parent / "fixtures" / "mfcc_reference.npz")
CLIPS = sorted(k.split("/", 1)[1] for k in FIXTURE.files if k.startswith("wave/"))
# The chirp that leaves the 20-4000 Hz band ends in frames that hold only spectral leakage there
# (near silence, which the log amplifies): float32 FFTs differ most in such frames. Within 2e-3
# elsewhere in float32 (tf.signal), 1e-6 in float64 (audio_ops).
TOLERANCE = {("mlperf_tiny", "chirp_100_6000"): 5e-3, ("narrowband", "chirp_100_6000"): 5e-3,
             ("narrowband_stream", "chirp_100_6000"): 5e-3}


@pytest.mark.parametrize("preset", sorted(MFCC_PRESETS))
@pytest.mark.parametrize("clip", CLIPS)
def test_mfcc_equals_tensorflow(preset: str, clip: str) -> None:
    """max |ours - TF| / max |TF| on the stored reference clips (tests/fixtures/make_mfcc_reference.py)."""
    ours = MFCC(preset)(torch.from_numpy(FIXTURE[f"wave/{clip}"]))
    reference = FIXTURE[f"{preset}/{clip}"]
    assert ours.shape == (1, 1, 49, 10) and reference.shape == (49, 10)
    error = np.abs(ours[0, 0].numpy() - reference).max() / np.abs(reference).max()
    assert error <= TOLERANCE.get((preset, clip), 1e-6 if MFCC_PRESETS[preset].double else 2e-3), error


def test_mfcc_is_batched_scriptable_and_pads_short_clips() -> None:
    mfcc = MFCC()
    waves = torch.randn(3, 16000) * 0.1
    batch = mfcc(waves)
    assert batch.shape == (3, 1, 49, 10)
    assert torch.allclose(batch[1], mfcc(waves[1])[0])
    assert torch.equal(torch.jit.script(mfcc)(waves), batch)
    short = waves[0, :8000]
    assert torch.equal(mfcc(short), mfcc(torch.cat([short, torch.zeros(8000)])))
    with pytest.raises(ValueError, match="unknown MFCC preset .htk.; allowed: mlperf_tiny, arm_kws, narrowband, narrowband_stream"):
        MFCC("htk")


@pytest.mark.parametrize("hz", [300.0, 1000.0, 2500.0])
def test_a_pure_tone_lands_in_its_mel_band(hz: float) -> None:
    t = torch.arange(16000) / 16000
    log_mel = MFCC().log_mel(torch.sin(2 * math.pi * hz * t))[0]  # (frames, 40)
    band = int(log_mel.mean(0).argmax())
    to_mel = lambda f: 1127.0 * math.log1p(f / 700.0)  # noqa: E731
    edges = np.linspace(to_mel(20.0), to_mel(4000.0), 42)
    assert edges[band] < to_mel(hz) < edges[band + 2]  # inside the band's triangle


@pytest.mark.parametrize("preset, floor", [("mlperf_tiny", 1e-6), ("arm_kws", 1e-12)])
def test_silence_gives_the_log_floor(preset: str, floor: float) -> None:
    mfcc = MFCC(preset)(torch.zeros(2, 16000))
    assert torch.allclose(mfcc[..., 0], torch.full((2, 1, 49), 40 * math.sqrt(2 / 40) * math.log(floor)), rtol=1e-6)
    assert mfcc[..., 1:].abs().max() < 1e-3


def test_tf_mel_matrix_leaves_out_dc_and_sums_triangles() -> None:
    matrix = tf_linear_to_mel_weight_matrix(40, 257, 16000, 20.0, 4000.0)
    assert matrix.shape == (257, 40) and matrix[0].abs().sum() == 0
    assert float(matrix.max()) <= 1.0 and (matrix > 0).sum(0).min() >= 1  # every band sees a bin


@pytest.mark.parametrize("name, split", [
    # sha1("00000000") ends in ...0c3b38b: its last 27 bits are 12,825,483, x 100 / (2^27 - 1) = 9.56
    ("00000000_nohash_0.wav", "validation"),
    # sha1("00000002") ends in ...1502aaa: 22,031,018 -> 16.41
    ("00000002_nohash_3.wav", "testing"),
    # sha1("00000001") ends in ...c13d6a7: 0x413d6a7 = 68,408,999 -> 50.97
    ("00000001_nohash_1.wav", "training"),
])
def test_the_split_rule_on_hashes_computed_by_hand(name: str, split: str) -> None:
    assert which_set(name) == which_set(f"/any/folder/{name}") == split


@pytest.fixture(scope="module")
def speech_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All ten keywords and three other words by 40 synthetic speakers, with background noise."""
    root = tmp_path_factory.mktemp("speech")
    generate_speech_data(root, speakers_count=40, words=KEYWORDS + ("bed", "cat", "wow"), seed=1, noise_seconds=3,
                         engines=["espeak"])
    return root


def test_generated_speakers_never_cross_splits(speech_data: Path) -> None:
    splits: dict[str, set[str]] = {}
    for wav in speech_data.glob("*/*.wav"):
        if wav.parent.name != BACKGROUND_NOISE:
            splits.setdefault(wav.name.split("_nohash_")[0], set()).add(which_set(wav.name))
    assert len(splits) == 40 and all(len(s) == 1 for s in splits.values())
    assert {next(iter(s)) for s in splits.values()} == {"training", "validation", "testing"}
    people = speakers(40, 1)
    assert len({p.name for p in people}) == 40 and set(splits) == {speaker_id(p) for p in people}
    assert sorted(p.name for p in (speech_data / BACKGROUND_NOISE).iterdir()) == [
        "brown_noise.wav", "hum_50hz.wav", "pink_and_hum.wav", "pink_noise.wav", "white_and_brown.wav",
        "white_noise.wav"]


def test_twelve_class_labels_are_balanced(speech_data: Path) -> None:
    classes, items = _index(speech_data, "12", seed=0)
    assert classes == [SILENCE, UNKNOWN, *KEYWORDS]
    for split, part in items.items():
        counts = np.bincount(part.labels, minlength=12)
        keywords = counts[2:].sum()
        assert counts[0] == counts[1] == math.ceil(keywords / 8), split  # 10% silence, 10% unknown
        assert set(counts[2:]) == {keywords // 10}  # every speaker said every keyword
        assert all(f is None for f, label in zip(part.files, part.labels) if label == 0)


def test_augmentation_is_off_for_evaluation(speech_data: Path) -> None:
    data = build_speech_commands(speech_data)
    assert torch.equal(data.val[0][0], data.val[0][0]) and len(data.test) > 0
    again = build_speech_commands(speech_data)
    assert torch.equal(data.val.tensors[0], again.val.tensors[0])  # the same silence clips every run
    keyword = next(i for i, label in enumerate(data.train.labels) if label >= 2)
    first, again = data.train[keyword][0], data.train[keyword][0]
    data.train.set_epoch(1)
    second = data.train[keyword][0]
    assert first.shape == (1, 49, 10) and torch.equal(first, again)  # one clip's draws of one epoch
    assert not torch.equal(first, second)  # a fresh shift and noise each epoch


def test_all_words_task(speech_data: Path) -> None:
    data = build_speech_commands(speech_data, task="all")
    assert data.classes == sorted(KEYWORDS + ("bed", "cat", "wow"))


def test_train_then_spot_a_held_out_speaker(tmp_path: Path) -> None:
    """A handful of words by a few dozen English voices: trains above chance, and spots the
    word a held-out speaker says."""
    data, out = tmp_path / "speech", tmp_path / "kws"
    generate_speech_data(data, speakers_count=48, words=("yes", "no", "up", "down"), seed=3, noise_seconds=2,
                         voices=("en", "en-us", "en-gb-x-rp"), engines=["espeak"])
    res = run_in_process("train", ["--model", "ds_cnn_s", "--dataset", "speech_commands", "--speech-task", "all",
                                   "--data-dir", str(data), "--epochs", "60", "--batch-size", "16", "-q",
                                   "--out-dir", str(out)])
    assert res.returncode == 0, res.stderr
    test_line = next(line for line in res.stdout.splitlines() if line.startswith("test top-1"))
    assert float(test_line.split()[4].rstrip("%")) > 2 * 100 / 4  # twice chance, on held-out speakers
    assert (out / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    held_out = next(w for w in sorted((data / "yes").glob("*.wav")) if which_set(w.name) == "testing")
    spotted = run_in_process("spot", [str(out / "best.pt"), str(held_out)])
    assert spotted.returncode == 0, spotted.stderr
    assert spotted.stdout.startswith(f"{held_out}: yes ")
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    wave, _ = read_wav(held_out)
    stereo = tmp_path / "stereo_44k.wav"
    wavfile.write(stereo, 44100, np.stack([resample_poly(wave, 441, 160)] * 2, axis=1).astype(np.float32))
    spotted = run_in_process("spot", [str(out / "best.pt"), str(stereo)])
    assert spotted.stdout.startswith(f"{stereo}: yes ")
    assert spotted.stdout.rstrip().endswith("(note: mixed 2 channels down to mono; resampled from 44100 Hz to 16000 Hz)")
    loud = np.flatnonzero(np.abs(wave) > 0.05 * np.abs(wave).max())
    word = wave[loud[0]:loud[-1] + 1]
    late = tmp_path / "late_word.wav"  # 1.45 s, the word in its last half second: no part goes unheard
    wavfile.write(late, 16000, np.concatenate([np.zeros(23200 - len(word), np.float32), word]).astype(np.float32))
    spotted = run_in_process("spot", [str(out / "best.pt"), str(late)])
    assert spotted.stdout.startswith(f"{late}: yes ")
    assert re.search(r"\(note: 1\.45 s: scored the second from 0\.[0-4]\d s, the most confident\)$", spotted.stdout.strip())
    whole = run_in_process("spot", [str(out / "best.pt"), str(data)])  # a Speech Commands layout: word folders
    clips = sorted(str(w) for w in data.glob("*/*.wav") if w.parent.name != "_background_noise_")
    assert whole.returncode == 0 and sorted(line.split(": ")[0] for line in whole.stdout.splitlines()) == clips
    not_audio = tmp_path / "notes.wav"
    not_audio.write_text("not audio")
    bad = run_in_process("spot", [str(out / "best.pt"), str(not_audio)])
    assert bad.returncode == 2 and bad.stderr.startswith(f"error: {not_audio}: not a readable WAV file")


def test_make_speech_data_refuses_a_folder_with_files(tmp_path: Path) -> None:
    (tmp_path / "mine.txt").write_text("the user's")
    res = run_in_process("make_speech_data", ["--out", str(tmp_path), "--speakers", "2"])
    assert res.returncode == 2 and "exists and is not an empty folder" in res.stderr
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]


def test_ds_cnn_takes_the_front_end_output() -> None:
    model = create_model("ds_cnn_s").eval()
    assert model(MFCC()(torch.randn(2, 16000))).shape == (2, 12)


def test_split_lists_take_precedence_over_the_hash(speech_data: Path, tmp_path: Path) -> None:
    """Where validation_list.txt and testing_list.txt exist they decide the split, as in the real
    dataset's release."""
    import shutil

    root = tmp_path / "listed"
    shutil.copytree(speech_data, root)
    files = sorted(f"{p.parent.name}/{p.name}" for p in root.glob("*/*.wav") if p.parent.name != BACKGROUND_NOISE)
    yes = [f for f in files if f.startswith("yes/")]
    (root / "validation_list.txt").write_text("\n".join(yes[:2]) + "\n")
    (root / "testing_list.txt").write_text(yes[2] + "\n")
    classes, items = _index(root, "all", seed=0)
    listed = {split: sorted(Path(f).relative_to(root).as_posix() for f in part.files) for split, part in items.items()}
    assert listed["validation"] == yes[:2] and listed["testing"] == [yes[2]]
    assert len(listed["training"]) == len(files) - 3


def test_split_lists_that_name_no_file_are_said_to(speech_data: Path, tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "listed"
    shutil.copytree(speech_data, root)
    (root / "validation_list.txt").write_text("yes/nobody_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/nobody_nohash_1.wav\n")
    with pytest.raises(Exception, match="validation_list.txt and testing_list.txt name no file in it \\(e.g. "
                                        "'no/nobody_nohash_1.wav'"):
        build_speech_commands(root)
