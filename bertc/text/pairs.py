"""Readers for evaluation text: GLUE MRPC TSV files and plain text files.

Every reader returns a list of `Pair` (label, text_a, text_b). Bad input is
reported as a `BertcError` naming the file, the line and what was expected.
"""

from __future__ import annotations

import csv
import dataclasses
import os

from bertc.errors import BertcError

MRPC_COLUMNS = ("Quality", "#1 ID", "#2 ID", "#1 String", "#2 String")
# GLUE's MRPC test.tsv has an `index` column in place of the label.
_MRPC_UNLABELED_FIRST = "index"

_DEFAULT_MRPC = os.path.join("..", "shared", "data", "glue_mrpc_dev.tsv")


@dataclasses.dataclass(frozen=True)
class Pair:
    """One evaluation example; `text_b` is None for a single sentence."""

    label: int | None
    text_a: str
    text_b: str | None


def default_mrpc_path() -> str | None:
    """The MRPC dev set at `../shared/data/glue_mrpc_dev.tsv` from the repo root, if present."""
    repo_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.normpath(os.path.join(repo_root, _DEFAULT_MRPC))
    return path if os.path.isfile(path) else None


def _read_lines(path) -> list[str]:
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            return f.read().splitlines()
    except FileNotFoundError:
        raise BertcError(f"{path}: file not found; expected a text or MRPC TSV file") from None
    except IsADirectoryError:
        raise BertcError(f"{path}: is a directory; expected a text or MRPC TSV file") from None
    except UnicodeDecodeError as e:
        raise BertcError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); "
                         "expected UTF-8 text") from None
    except OSError as e:
        raise BertcError(f"{path}: cannot read ({e.strerror}); expected a readable "
                         "text file") from None


def _looks_like_mrpc_header(fields: list[str]) -> bool:
    return (len(fields) == len(MRPC_COLUMNS)
            and fields[0].strip() in (MRPC_COLUMNS[0], _MRPC_UNLABELED_FIRST)
            and tuple(f.strip() for f in fields[1:]) == MRPC_COLUMNS[1:])


def read_mrpc_tsv(path) -> list[Pair]:
    """Reads a GLUE MRPC TSV (header `Quality  #1 ID  #2 ID  #1 String  #2 String`).

    Quotes are literal (`csv.QUOTE_NONE`); a BOM is skipped. A test-set file
    whose first column is `index` yields unlabeled pairs.
    """
    path = os.fspath(path)
    lines = _read_lines(path)
    reader = csv.reader(lines, delimiter="\t", quoting=csv.QUOTE_NONE)
    pairs = []
    labeled = True
    for line_no, row in enumerate(reader, start=1):
        if line_no == 1:
            if not _looks_like_mrpc_header(row):
                raise BertcError(f"{path}:1: expected the MRPC header "
                                 f"{' | '.join(MRPC_COLUMNS)!r}, got {' | '.join(row)!r}")
            labeled = row[0].strip() == MRPC_COLUMNS[0]
            continue
        if not row or (len(row) == 1 and not row[0].strip()):
            continue  # blank line
        if len(row) != len(MRPC_COLUMNS):
            raise BertcError(f"{path}:{line_no}: expected {len(MRPC_COLUMNS)} "
                             f"tab-separated columns, got {len(row)}")
        label = None
        if labeled:
            try:
                label = int(row[0])
            except ValueError:
                raise BertcError(f"{path}:{line_no}: expected an integer label in "
                                 f"column 'Quality', got {row[0]!r}") from None
        pairs.append(Pair(label=label, text_a=row[3], text_b=row[4]))
    if not lines:
        raise BertcError(f"{path}: file is empty; expected the MRPC header and rows")
    return pairs


def read_text_file(path) -> list[Pair]:
    """One example per non-empty line; `a<TAB>b` is a sentence pair. No labels."""
    path = os.fspath(path)
    pairs = []
    for line_no, line in enumerate(_read_lines(path), start=1):
        if not line.strip():
            continue
        if "\t" not in line:
            pairs.append(Pair(label=None, text_a=line, text_b=None))
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise BertcError(f"{path}:{line_no}: expected one sentence or two non-empty "
                             f"sentences separated by one tab, got {len(fields)} fields")
        pairs.append(Pair(label=None, text_a=fields[0], text_b=fields[1]))
    return pairs


def read_pairs(path) -> list[Pair]:
    """Reads `path` as MRPC TSV when it is a `.tsv` with the MRPC header, else as text."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BertcError(f"{path}: file not found; expected a text or MRPC TSV file")
    if path.lower().endswith(".tsv"):
        lines = _read_lines(path)
        if lines and _looks_like_mrpc_header(lines[0].split("\t")):
            return read_mrpc_tsv(path)
    return read_text_file(path)


#: all-MiniLM-L6-v2's paraphrase threshold on MRPC dev (cosine of the two sentence
#: embeddings; how it was calibrated: bertc/serving/paraphrase.py).
DEFAULT_PARAPHRASE_THRESHOLD = 0.68


def paraphrase_threshold(manifest: dict) -> float:
    """An embedding artifact's threshold: the manifest's `paraphrase_threshold` (at the
    top or in its hints), else DEFAULT_PARAPHRASE_THRESHOLD; as `bertc serve` decides."""
    for doc in (manifest, manifest.get("hints") or {}):
        value = doc.get("paraphrase_threshold")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return DEFAULT_PARAPHRASE_THRESHOLD
