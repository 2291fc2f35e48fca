"""The embedded text corpus: the Python standard library's own source files.

Every machine that runs autoprune has them, so the language task needs no download. The
corpus is a fixed list of top-level modules (those that exist on this Python: the files differ
between versions, so every result records the corpus's content hash and its files), split
into train, validation and test *by file* (a file's name decides its split, so no split sees
text of another's files), encoded character by character over a fixed vocabulary: printable
ASCII, newline and tab, and one id for anything else.
"""

from __future__ import annotations

import hashlib
import sysconfig
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import torch

__all__ = ["MODULES", "VOCAB", "TextSplits", "decode", "encode", "load_stdlib_corpus"]

#: Characters with an id of their own; everything else is id ``len(VOCAB)``.
VOCAB = "\n\t" + "".join(chr(c) for c in range(32, 127))

#: The modules of the corpus (``<stdlib>/<name>.py``), fixed so the corpus only changes when
#: Python's own files do. Modules removed by Python 3.13 are left out.
MODULES: tuple[str, ...] = tuple("""
    abc argparse ast base64 bdb bisect bz2 calendar cmd code codecs codeop colorsys
    compileall configparser contextlib contextvars copy copyreg cProfile csv dataclasses
    datetime decimal difflib dis doctest enum filecmp fileinput fnmatch fractions ftplib
    functools genericpath getopt getpass gettext glob graphlib gzip hashlib heapq hmac
    imaplib inspect io ipaddress keyword linecache locale lzma mailbox mimetypes modulefinder
    netrc ntpath nturl2path numbers opcode operator optparse os pdb pickle pickletools
    pkgutil platform plistlib poplib posixpath pprint profile pstats pty py_compile pyclbr
    pydoc queue quopri random reprlib rlcompleter runpy sched secrets selectors shelve shlex
    shutil signal site smtplib socket socketserver ssl stat statistics string stringprep
    struct subprocess symtable tabnanny tarfile tempfile textwrap threading timeit token
    tokenize trace traceback tracemalloc tty turtle types typing uuid warnings wave weakref
    webbrowser zipapp zipfile zipimport
""".split())

_UNKNOWN = len(VOCAB)
_INDEX = {c: i for i, c in enumerate(VOCAB)}


# id of every code point below 128; anything above is unknown too
_TABLE = torch.tensor([_INDEX.get(chr(c), _UNKNOWN) for c in range(128)], dtype=torch.long)


def encode(text: str) -> torch.Tensor:
    """Character ids of ``text`` (int64)."""
    if not text:
        return torch.zeros(0, dtype=torch.long)
    codes = torch.frombuffer(bytearray(text.encode("utf-32-le")), dtype=torch.int32).long()
    return torch.where(codes < 128, _TABLE[codes.clamp(max=127)], _UNKNOWN)


def decode(ids: torch.Tensor) -> str:
    return "".join(VOCAB[i] if i < _UNKNOWN else "?" for i in ids.tolist())


def _split_of(module: str) -> str:
    """``test`` for one file in ten, ``val`` for one in ten, else ``train``: by a checksum of
    the module's name, so a file's split never depends on which other files exist."""
    bucket = zlib.crc32(module.encode()) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


# eq=False: the fields are tensors, whose == is elementwise and not a truth value.
@dataclass(frozen=True, kw_only=True, eq=False)
class TextSplits:
    """Character ids per split (1-D int64), the vocabulary size, the context length models
    are trained with (``block``), and what the corpus was made of."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    vocab_size: int
    block: int
    sha256: str
    files: dict[str, list[str]] = field(default_factory=dict)

    def ids(self, split: str) -> torch.Tensor:
        if split not in ("train", "val", "test"):
            raise ValueError(f"unknown split {split!r}; choose one of train, val, test")
        return getattr(self, split)

    def batch(self, split: str, *, batch_size: int, generator: torch.Generator
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Random windows of ``block`` characters and the characters that follow each."""
        ids = self.ids(split)
        start = torch.randint(0, len(ids) - self.block - 1, (batch_size,), generator=generator)
        offsets = torch.arange(self.block)
        x = ids[start[:, None] + offsets]
        return x, ids[start[:, None] + offsets + 1]

    def windows(self, split: str, *, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The split cut into consecutive windows (the same every time: for scoring), at most
        ``limit`` of them, spread evenly over the split."""
        ids = self.ids(split)
        n = (len(ids) - 1) // self.block
        take = torch.arange(n) if limit is None or limit >= n else \
            torch.linspace(0, n - 1, limit).long()
        starts = take * self.block
        offsets = torch.arange(self.block)
        return ids[starts[:, None] + offsets], ids[starts[:, None] + offsets + 1]

    def example_inputs(self, batch: int = 1) -> torch.Tensor:
        """Zeros shaped like one input batch, for tracing and cost counting."""
        return torch.zeros(batch, self.block, dtype=torch.long)

    def info(self) -> dict[str, object]:
        """What results record about the corpus."""
        return {"name": self.name, "sha256": self.sha256, "characters": {
            s: int(len(self.ids(s))) for s in ("train", "val", "test")},
            "files": {s: len(v) for s, v in self.files.items()}, "block": self.block}


def load_stdlib_corpus(*, block: int = 64, root: Path | None = None,
                       max_chars: int | None = None) -> TextSplits:
    """The ``python-stdlib`` corpus of this Python (``root``: another directory of ``.py``
    files, for tests). ``max_chars`` keeps the first characters of each split (a quick run)."""
    root = Path(root or sysconfig.get_paths()["stdlib"])
    texts: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    digest = hashlib.sha256()
    for module in MODULES:
        path = root / f"{module}.py"
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8", errors="replace")
        digest.update(module.encode() + b"\0" + text.encode("utf-8") + b"\0")
        split = _split_of(module)
        texts[split].append(text)
        files[split].append(module)
    if not all(files.values()):
        raise FileNotFoundError(
            f"the python-stdlib corpus found too few of its modules under {root} "
            f"({sum(map(len, files.values()))} of {len(MODULES)}). Fix: run with a standard "
            "CPython whose Lib/ directory is installed.")
    splits = {s: encode("\n".join(t)[:max_chars]) for s, t in texts.items()}
    return TextSplits(name="python-stdlib", vocab_size=len(VOCAB) + 1, block=block,
                      sha256=digest.hexdigest(), files=files, **splits)
