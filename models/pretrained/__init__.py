"""Weights shipped with the package: ``ds_cnn_s_speech.safetensors``, a DS-CNN-S keyword spotter
(its card: docs/keyword_spotting.md; ``dszoo.audio.spot.load_spotter()`` and
``create_model("ds_cnn_s", pretrained=True)`` load it)."""
