"""datasets.verify and the shared truncation rule (datasets.decoding): a video that decodes fewer frames than its
container's header promises is named, whole videos pass."""
import sys

import pytest

from datasets import decoding, verify
from datasets.synthetic import render_video, write_video

DECODERS = ["pyav"] + (["decord"] if decoding.decord is not None else [])


@pytest.fixture(scope="module")
def webms(tmp_path_factory):
    """A whole 36-frame VP9 webm, a copy cut to 60% of its bytes (a download that stopped: its header still
    promises 36 frames) and the frames of the cut one that PyAV decodes, counted here."""
    import av

    root = tmp_path_factory.mktemp("webm")
    whole, cut = str(root / "whole.webm"), str(root / "cut.webm")
    write_video(whole, render_video(1, 0, 32, 42, 36), codec="libvpx-vp9")
    data = open(whole, "rb").read()
    open(cut, "wb").write(data[: len(data) * 6 // 10])
    with av.open(cut) as container:
        present = sum(1 for _ in container.decode(video=0))
    assert present < 35
    return whole, cut, present


def test_truncation_rule():
    assert decoding.truncation(20, 36) == "20 frames decode, its header promises 36"
    assert decoding.truncation(35, 36) is None  # duration x rate rounds: one frame of slack
    assert decoding.truncation(20, None) is None  # no duration in the header: nothing to compare


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_cut_webm_is_named_truncated_and_a_whole_one_passes(webms, decoder):
    whole, cut, present = webms
    assert decoding.promised_frames(cut) == 36 == decoding.count_frames(whole, decoder)
    assert verify.check(whole, decoder=decoder) is None and decoding.check_truncated(whole, decoder) is None
    assert verify.check(cut, decoder=decoder) == f"truncated: {present} frames decode, its header promises 36"


def test_verify_cli_lists_the_truncated_video(webms, tmp_path, monkeypatch, capsys):
    whole, cut, present = webms
    csv = tmp_path / "list.csv"
    csv.write_text(f"{whole} 0\n{cut} 1\n")
    monkeypatch.setattr(sys, "argv", ["verify", str(csv), "--workers", "1"])
    assert verify.main() == 1
    out = capsys.readouterr().out
    assert f"BAD {cut}: truncated: {present} frames decode, its header promises 36" in out
    assert "1/2 videos OK, 1 bad" in out
