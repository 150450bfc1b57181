"""Video lists: one video per line with its integer class label, in either of the two forms users have.

  space  `<path> <label>`   VideoMAE's lists (SSv2, Kinetics-400): a single space, so paths cannot contain spaces
  comma  `<path>,<label>`   comma-separated lists: the label follows the last comma, so paths may contain spaces

The form is detected from the first listed line and every other line must follow it. Lists have no header line:
one is refused with a message that says so. Relative paths resolve against `data_root` (default: the list's folder).
Files are UTF-8 (a byte-order mark is ignored); every error names file:line.
"""
import os
import re
from collections import Counter

LABEL = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit() also accepts '²', which int() refuses
FORMS = {" ": "'<video path> <integer label>' (ASCII digits) separated by one space",
         ",": "'<video path>,<integer label>' (ASCII digits; the label after the last comma)"}
HEADER_WORD = re.compile(r"[A-Za-z_ ]+")  # column names where a path and a label belong: 'path,label', 'video label'


def _split(line: str, sep: str) -> tuple[str, str] | None:
    """(path, label text) when `line` has the form of `sep`, else None."""
    if sep == " ":
        parts = line.split(" ")
        return (parts[0], parts[1]) if len(parts) == 2 and parts[0] and LABEL.fullmatch(parts[1]) else None
    path, comma, label = line.rpartition(",")
    return (path, label) if comma and path.strip() and LABEL.fullmatch(label) else None


def _detect(csv_path: str, lineno: int, line: str) -> str:
    """The separator of the list's first line; a header line or a line of neither form is an error."""
    for sep in FORMS:
        if _split(line, sep) is not None:
            return sep
    for sep in FORMS:
        head, found, last = line.rpartition(sep)
        if found and HEADER_WORD.fullmatch(head.strip()) and HEADER_WORD.fullmatch(last.strip()):
            raise ValueError(f"{csv_path}:{lineno}: {line!r} looks like a header line; video lists have no header "
                             f"(every line is a video and its label): remove that line")
    raise ValueError(f"{csv_path}:{lineno}: expected {FORMS[' ']} or {FORMS[',']}, got {line!r}")


def _lines(csv_path: str):
    """(line number, text without the line break) of every line; a byte that is not UTF-8 names its file:line."""
    with open(csv_path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            try:
                text = raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{csv_path}:{lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not "
                                 f"UTF-8; save the list as UTF-8") from None
            yield lineno, text.rstrip("\r\n")


def read_video_list(csv_path: str, data_root: str | None = None, nb_classes: int | None = None,
                    check_exists: bool = False, unique: bool = False) -> list[tuple[str, int]]:
    """Parses a space or comma list (module docstring) into (resolved path, label) pairs; errors name file:line,
    show the line with repr (invisible characters visible) and the expected form.

    ``nb_classes``: labels must lie in [0, nb_classes). ``check_exists``: every listed file must exist, else a
    FileNotFoundError lists the missing ones. ``unique``: a video listed twice (same path after resolution) is an
    error naming both lines; evaluation needs it (each video counted once), while a training list may repeat a video
    to oversample it.
    """
    if not os.path.isfile(csv_path):
        raise FileNotFoundError(f"video list not found: {csv_path!r}")
    root = data_root if data_root is not None else os.path.dirname(os.path.abspath(csv_path))
    samples, first_line, sep = [], {}, None
    for lineno, line in _lines(csv_path):
        if not line.strip():
            continue
        sep = sep or _detect(csv_path, lineno, line)
        parsed = _split(line, sep)
        if parsed is None:
            raise ValueError(f"{csv_path}:{lineno}: expected {FORMS[sep]} like the list's first line, got {line!r}")
        path, label = parsed[0], int(parsed[1])
        if nb_classes is not None and not 0 <= label < nb_classes:
            raise ValueError(f"{csv_path}:{lineno}: label {label} outside [0, {nb_classes}) (nb_classes)")
        path = path if os.path.isabs(path) else os.path.join(root, path)
        key = os.path.normpath(path)
        if unique and key in first_line:
            raise ValueError(f"{csv_path}:{lineno}: {path!r} is already listed at line {first_line[key]}; an "
                             f"evaluation list names each video once")
        first_line.setdefault(key, lineno)
        samples.append((path, label))
    if not samples:
        raise ValueError(f"{csv_path}: no videos listed")
    if check_exists:
        missing = [p for p, _ in samples if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(
                f"{csv_path}: {len(missing)} of {len(samples)} listed videos do not exist (paths resolve against "
                f"{root!r}; --data_root changes that): {', '.join(map(repr, missing[:5]))}"
                f"{' ...' if len(missing) > 5 else ''}")
    return samples


def video_ids(paths: list[str]) -> list[str]:
    """An id per listed video for reports and view merging: the file name without its extension, or, for videos
    whose file names clash (the same name in two class folders), the whole path without its extension (with it, when
    only the extension tells two videos apart)."""
    names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
    counts = Counter(names)
    ids = [name if counts[name] == 1 else os.path.splitext(p)[0] for name, p in zip(names, paths)]
    counts = Counter(ids)
    return [i if counts[i] == 1 else p for i, p in zip(ids, paths)]  # one folder, one name, two formats: the path


def labels_used(samples: list[tuple[str, int]]) -> list[int]:
    """The distinct labels of a list, sorted."""
    return sorted({label for _, label in samples})


def few_classes_warning(csv_path: str, labels: list[int], nb_classes: int, min_fraction: float = 0.5) -> str | None:
    """A warning when a list uses fewer than ``min_fraction`` of the head's classes (a run about to learn a
    174-way head on a 4-class dataset), else None. ``labels``: labels_used of the list."""
    if len(labels) >= min_fraction * nb_classes:
        return None
    return (f"{csv_path} uses {len(labels)} distinct labels (largest {max(labels)}) but the classification head has "
            f"nb_classes={nb_classes} outputs: pass --nb_classes {max(labels) + 1} if the dataset has "
            f"{max(labels) + 1} classes")
