"""The CLI's console carries NanoFlux's own output: known third-party noise is silenced where every stage starts."""

from __future__ import annotations

import logging
import warnings

import numpy as np

from builder.novelty import embed
from nanoflux.cli import quiet_third_parties


def test_known_third_party_warnings_are_silenced_and_others_kept(monkeypatch, caplog):
    monkeypatch.delenv("HF_DATASETS_DISABLE_PROGRESS_BARS", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "0")  # a user's own choice wins
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_parties()
        warnings.warn("`is_gradient_checkpointing` is deprecated, use ...", FutureWarning, stacklevel=1)
        warnings.warn("something else is deprecated", FutureWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["something else is deprecated"]
    import os

    assert os.environ["HF_DATASETS_DISABLE_PROGRESS_BARS"] == "1"
    assert os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] == "0"
    hub = logging.getLogger("huggingface_hub._commit_api")
    with caplog.at_level(logging.WARNING, logger="huggingface_hub._commit_api"):
        hub.warning(
            "Uploading files as a binary IO buffer is not supported by Xet Storage. Falling back to HTTP upload."
        )
        hub.warning("a real problem")
    assert [r.getMessage() for r in caplog.records] == ["a real problem"]


def test_embedding_shows_no_progress_bar_at_info_level(capsys, caplog):
    class Embedder:
        def encode(self, texts, **kwargs):
            assert kwargs.get("show_progress_bar") is False  # sentence-transformers shows "Batches" at INFO otherwise
            return np.ones((len(texts), 2))

    with caplog.at_level(logging.INFO):
        assert embed(Embedder(), ["a", "b"]).shape == (2, 2)


def test_a_missing_optional_package_names_its_extra_without_a_traceback(monkeypatch):
    import sys
    import types

    import pytest

    from nanoflux.cli import main

    class WithoutTrl(types.ModuleType):
        def __getattr__(self, name):
            if name == "command":  # the stage's entry, as if its module's import had failed on trl
                raise ModuleNotFoundError("No module named 'trl'", name="trl")
            raise AttributeError(name)

    monkeypatch.setitem(sys.modules, "trainer.train", WithoutTrl("trainer.train"))
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--config", "configs/train/local.yaml"])
    assert (
        exit_info.value.code
        == "nanoflux train: trl is not installed. Fix: pip install 'nanoflux[train]' (from a clone: pip install -e"
        " '.[train]')"
    )
