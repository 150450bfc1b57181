"""Video lists: the space and comma forms, headers, encodings, repeated videos, ids and the labels a list uses."""
import re

import pytest

from datasets.lists import few_classes_warning, labels_used, read_video_list, video_ids


def test_comma_list_with_spaces_in_paths(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("videos/abseiling/a b.mp4,0\nvideos/air drumming/x,y.mp4,12\r\n\n/abs/c d.mp4,3\n")
    assert read_video_list(str(csv), nb_classes=400) == [
        (str(tmp_path / "videos/abseiling/a b.mp4"), 0), (str(tmp_path / "videos/air drumming/x,y.mp4"), 12),
        ("/abs/c d.mp4", 3)]


def test_read_video_list_paths_and_root(tmp_path):
    csv = tmp_path / "train.csv"
    csv.write_text("videos/1.mp4 3\n/abs/2.webm 0\n\n")
    assert read_video_list(str(csv)) == [(str(tmp_path / "videos/1.mp4"), 3), ("/abs/2.webm", 0)]
    assert read_video_list(str(csv), data_root="/data")[0] == ("/data/videos/1.mp4", 3)


def test_byte_order_mark_does_not_hide_the_first_video(tmp_path):
    """A CSV saved by an editor that writes a UTF-8 BOM: the first path must not start with U+FEFF."""
    csv = tmp_path / "train.csv"
    csv.write_bytes("videos/1.mp4 3\nvideos/2.mp4 0\n".encode("utf-8-sig"))
    assert read_video_list(str(csv))[0] == (str(tmp_path / "videos/1.mp4"), 3)


SPACE, COMMA = r"'<video path> <integer label>' \(ASCII digits\)", r"'<video path>,<integer label>'"


@pytest.mark.parametrize("first,line,form", [("videos/0.mp4 1", line, SPACE) for line in [
    "videos/1.mp4\t3", "videos/1.mp4  3", "videos/1.mp4 3 x", "videos/1.mp4 cat", "videos/1.mp4", "videos/1.mp4 \u00b2",
    "videos/1.mp4 \u0663", "my video.mp4,2"]] + [("a.mp4,1", line, COMMA) for line in ["b.mp4 2", "b.mp4, 2", ",2"]])
def test_malformed_line_names_file_and_line(tmp_path, first, line, form):
    """Including labels that str.isdigit() accepts but int() does not ('²') or that are not ASCII ('٣'), and lines
    of the other form than the list's first line."""
    csv = tmp_path / "val.csv"
    csv.write_text(f"{first}\n{line}\n", encoding="utf-8")
    with pytest.raises(ValueError, match=rf"val.csv:2: expected {form}.*got {re.escape(repr(line))}"):
        read_video_list(str(csv))


@pytest.mark.parametrize("sep", [" ", ","])
def test_label_out_of_range_is_an_error(tmp_path, sep):
    csv = tmp_path / "train.csv"
    csv.write_text(f"a.mp4{sep}0\nb.mp4{sep}174\n")
    with pytest.raises(ValueError, match=r"train.csv:2: label 174 outside \[0, 174\)"):
        read_video_list(str(csv), nb_classes=174)
    csv.write_text(f"a.mp4{sep}-1\n")
    with pytest.raises(ValueError, match=r"train.csv:1: label -1"):
        read_video_list(str(csv), nb_classes=174)


def test_a_comma_in_a_space_list_path_is_part_of_the_path(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text("videos/a,b.mp4 0\n")
    assert read_video_list(str(csv)) == [(str(tmp_path / "videos/a,b.mp4"), 0)]


HEADERS = ["path,label", "video label", "video_path, class id"]


@pytest.mark.parametrize("content,message", [
    *[(f"{h}\nvideos/1.mp4,3\n".encode(), rf"train.csv:1: {h!r} looks like a header line.*remove that line")
      for h in HEADERS],
    (b"videos/1.mp4\t3\n", r"train.csv:1: expected '<video path> <integer label>'.* or '<video path>,<integer "
                           r"label>'.*got 'videos/1.mp4\\t3'"),
    (b"videos/1.mp4 3\nvideos/caf\xe9.mp4 1\n", r"train.csv:2: byte 0xe9 at column 11 is not UTF-8"),
])
def test_header_unknown_form_and_non_utf8_byte_are_named_by_file_and_line(tmp_path, content, message):
    """A header line is refused (not read as a video); a first line of neither form names both forms."""
    csv = tmp_path / "train.csv"
    csv.write_bytes(content)
    with pytest.raises(ValueError, match=message):
        read_video_list(str(csv))


def test_a_video_listed_twice_is_refused_naming_both_lines(tmp_path):
    csv = tmp_path / "val.csv"
    csv.write_text("a/x.mp4,1\nb/x.mp4,1\n./a/x.mp4,2\n")
    with pytest.raises(ValueError, match=r"val.csv:3: '.*/\./a/x.mp4' is already listed at line 1"):
        read_video_list(str(csv), unique=True)
    assert len(read_video_list(str(csv))) == 3  # a training list may repeat a video (oversampling)


def test_same_file_name_in_two_folders_gives_two_ids():
    paths = ["/k/abseiling/v1.mp4", "/k/archery/v1.mp4", "/k/archery/v2.webm"]
    assert video_ids(paths) == ["/k/abseiling/v1", "/k/archery/v1", "v2"]
    assert video_ids(["/s/1.webm", "/s/2.webm"]) == ["1", "2"]  # unique names stay bare (SSv2's numeric ids)
    assert video_ids(["/a/x.mp4", "/a/x.webm"]) == ["/a/x.mp4", "/a/x.webm"]  # one folder, two formats


def test_labels_used_and_the_few_classes_warning():
    samples = [("a", 3), ("b", 0), ("c", 3), ("d", 1)]
    assert labels_used(samples) == [0, 1, 3]
    msg = few_classes_warning("train.csv", labels_used(samples), 174)
    assert msg == ("train.csv uses 3 distinct labels (largest 3) but the classification head has nb_classes=174 "
                   "outputs: pass --nb_classes 4 if the dataset has 4 classes")
    assert few_classes_warning("train.csv", list(range(200)), 400) is None  # half of the classes: no warning
    assert few_classes_warning("train.csv", list(range(199)), 400) is not None
