"""One pass over the files: the SHA-256 of each file's bytes (exact duplicates), whether it decodes
with the one decoder (`visionzoo.data.decode`; files that do not are `bad_files`), and its
perceptual hash: the DCT hash of Zauner (2010), from the `imagehash` package, 64 bits as 8 bytes.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from visionzoo.data.decode import ImageDecodeError, decode_image

__all__ = ["hash_file", "hash_files", "hamming"]


def hash_file(path: str) -> tuple[str, np.ndarray | None, tuple[int, int] | None, str | None]:
    """(SHA-256 of the bytes, 64-bit perceptual hash as 8 bytes, (width, height), error)."""
    import imagehash

    try:
        with open(path, "rb") as handle:  # streamed: a huge file costs no memory
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as error:
        return "", None, None, f"unreadable: {error.strerror or error}"
    try:
        image = decode_image(path)
    except ImageDecodeError as error:
        return digest, None, None, error.reason
    bits = imagehash.phash(image, hash_size=8).hash.flatten()
    return digest, np.packbits(bits), image.size, None


def hash_files(paths: list[str], progress: bool) -> tuple[list[str], np.ndarray, np.ndarray, dict[int, str]]:
    """(digests, perceptual hashes (N, 8) uint8, sizes (N, 2), {index: why it is bad}), four threads."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    digests, hashes, sizes, bad = [""] * len(paths), np.zeros((len(paths), 8), np.uint8), np.zeros((len(paths), 2)), {}
    columns = [TextColumn("hashing"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    with Progress(*columns, transient=True, disable=not progress) as bar, ThreadPoolExecutor(4) as pool:
        task = bar.add_task("hash", total=len(paths))
        for i, (digest, phash, size, error) in enumerate(pool.map(hash_file, paths, chunksize=64)):
            digests[i] = digest
            if error is None:
                hashes[i], sizes[i] = phash, size
            else:
                bad[i] = error
            bar.advance(task)
    return digests, hashes, sizes, bad


def hamming(hashes: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Differing bits between the perceptual hashes of rows `a` and rows `b`."""
    return np.unpackbits(hashes[a] ^ hashes[b], axis=-1).sum(-1)
