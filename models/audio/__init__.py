"""Audio for keyword spotting: the MFCC front end (``mfcc``), Speech Commands data (``speech_commands``),
an offline stand-in synthesised with eSpeak NG (``synth``, ``make_data``) and spotting words in
recordings (``spot``)."""
from .mfcc import MFCC, MFCC_PRESETS
from .speech_commands import KEYWORDS, SILENCE, UNKNOWN, build_speech_commands, read_wav, which_set

__all__ = ["KEYWORDS", "MFCC", "MFCC_PRESETS", "SILENCE", "UNKNOWN", "build_speech_commands", "read_wav", "which_set"]
