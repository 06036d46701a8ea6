"""Text corpora -> pre-tokenized blocks of max_length tokens, cached in resumable shards.

Inputs: plain text (split into paragraphs at blank lines; the paragraphs concatenate back to
the file) or a JSON array of {id, title, text} streamed with ijson (never loaded whole), each
article becoming `title + "\\n" + text` followed by the end-of-text token.

Cache: <cache_root>/<stem>-<source id>-tok<tokenizer hash>-L<max_length>/ holds shard_NNNNN.pt
(int32 blocks of max_length tokens) and meta.json (processed document count, shard list, the
tokens after the last full block, finalized flag). Rank 0 builds it a batch of documents at a
time, writing each shard and then the meta atomically, so an interrupted build resumes after the
last recorded batch; the other ranks poll meta.json until it says finalized, then all ranks meet
in a barrier (a long tokenization never hits a collective's timeout).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from itertools import islice
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from ...errors import DataError
from .tokenizer import tokenizer_hash

META = "meta.json"


def is_json_array(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(4096).lstrip()
    return head.startswith(b"[")


def iter_documents(path: Path | str) -> Iterator[str]:
    path = Path(path)
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    yield from (_json_docs(path) if is_json_array(path) else _text_docs(path))


def _json_docs(path: Path) -> Iterator[str]:
    import ijson

    with open(path, "rb") as f:
        try:
            for i, item in enumerate(ijson.items(f, "item")):
                if not isinstance(item, dict) or not isinstance(item.get("text"), str):
                    raise DataError(f"{path}: item {i} is not an object with a 'text' string "
                                    "(expected [{\"id\", \"title\", \"text\"}, ...])")
                title = item.get("title") or ""
                yield f"{title}\n{item['text']}" if title else item["text"]
        except ijson.JSONError as exc:
            raise DataError(f"{path}: malformed JSON ({exc})") from None


def _text_docs(path: Path) -> Iterator[str]:
    para: list[str] = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            para.append(line)
            if not line.strip() and len(para) > 1:
                yield "".join(para)
                para = []
    if para:
        yield "".join(para)


def source_id(path: Path) -> str:
    st = path.stat()
    key = f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def cache_folder(path: Path, tok: Any, max_length: int, cache_root: Path) -> Path:
    path = Path(path)
    return Path(cache_root) / (f"{path.stem}-{source_id(path)}-tok{tokenizer_hash(tok)}"
                               f"-L{max_length}")


def read_meta(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / META).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def build_cache(path: Path | str, tok: Any, max_length: int, cache_root: Path | str,
                batch_docs: int = 512,
                on_shard: Callable[[dict], None] | None = None) -> Path:
    """Tokenize `path` into the cache (resuming a partial build); returns the folder."""
    path = Path(path)
    folder = cache_folder(path, tok, max_length, Path(cache_root))
    folder.mkdir(parents=True, exist_ok=True)
    meta = read_meta(folder) or {"source": str(path), "tokenizer_hash": tokenizer_hash(tok),
                                 "max_length": max_length, "processed_docs": 0, "shards": [],
                                 "tail": [], "num_blocks": 0, "finalized": False}
    if meta["finalized"]:
        return folder
    eos = [tok.eos_token_id] if is_json_array(path) else []
    docs = islice(iter_documents(path), meta["processed_docs"], None)
    while batch := list(islice(docs, batch_docs)):
        ids = list(meta["tail"])
        for enc in tok(batch, add_special_tokens=False)["input_ids"]:
            ids.extend(enc + eos)
        full = len(ids) // max_length
        if full:
            name = f"shard_{len(meta['shards']):05d}.pt"
            blocks = torch.tensor(ids[: full * max_length], dtype=torch.int32)
            _write_atomic(folder / name, lambda p: torch.save(blocks.view(full, max_length), p))
            meta["shards"].append({"file": name, "blocks": full})
            meta["num_blocks"] += full
        meta["tail"] = ids[full * max_length:]
        meta["processed_docs"] += len(batch)
        _write_atomic(folder / META, lambda p: p.write_text(json.dumps(meta)))
        if on_shard is not None:
            on_shard(dict(meta))
    meta["finalized"] = True
    _write_atomic(folder / META, lambda p: p.write_text(json.dumps(meta)))
    return folder


def wait_finalized(folder: Path, timeout_s: float = 6 * 3600, poll_s: float = 0.5) -> None:
    """Non-zero ranks: wait (polling, no collective) until rank 0 finalizes the cache."""
    start = last_note = time.monotonic()
    while not (read_meta(folder) or {}).get("finalized"):
        if time.monotonic() - start > timeout_s:
            raise DataError(f"token cache {folder} not finalized after {timeout_s:.0f} s; "
                            "did rank 0 fail while tokenizing?")
        if time.monotonic() - last_note > 60:
            print(f"waiting for rank 0 to tokenize into {folder} ...", flush=True)
            last_note = time.monotonic()
        time.sleep(poll_s)


def prepare_cache(path: Path | str, tok: Any, max_length: int, cache_root: Path | str,
                  rank: int, world: int) -> Path:
    folder = cache_folder(Path(path), tok, max_length, Path(cache_root))
    if rank == 0:
        build_cache(path, tok, max_length, cache_root)
    else:
        wait_finalized(folder)
    if world > 1:
        import torch.distributed as dist

        dist.barrier()
    return folder


def load_blocks(folder: Path) -> torch.Tensor:
    meta = read_meta(folder)
    if not meta or not meta.get("finalized"):
        raise DataError(f"token cache {folder} is not finalized")
    shards = [torch.load(Path(folder) / s["file"]) for s in meta["shards"]]
    if not shards:
        raise DataError(f"{meta['source']} gives fewer than {meta['max_length']} tokens; "
                        "use more text or a smaller --max-length")
    return torch.cat(shards).long()


def split_blocks(blocks: torch.Tensor, val_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, val): the last val_fraction of the blocks is held out (contiguous text)."""
    n_val = max(1, round(val_fraction * blocks.size(0))) if val_fraction > 0 else 0
    if blocks.size(0) - n_val < 1:
        raise DataError(f"only {blocks.size(0)} blocks: too few to hold out {n_val} for "
                        "validation")
    return blocks[: blocks.size(0) - n_val], blocks[blocks.size(0) - n_val:]


def batches(blocks: torch.Tensor, batch_size: int, rank: int, world: int,
            seed: int) -> Iterator[torch.Tensor]:
    """Endless per-rank batches: a seeded permutation per epoch, dealt round-robin to ranks."""
    per_rank = blocks.size(0) // world
    if per_rank < batch_size:
        raise DataError(f"{blocks.size(0)} training blocks cannot fill a batch of {batch_size} "
                        f"on each of {world} ranks; lower --batch-size or --max-length")
    epoch = 0
    while True:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        mine = torch.randperm(blocks.size(0), generator=gen)[rank::world][:per_rank]
        for start in range(0, per_rank - batch_size + 1, batch_size):
            yield blocks[mine[start:start + batch_size]]
        epoch += 1
