"""Check, before any model is built, that every TFRecord shard of an RLDS dataset split is present and intact.

An empty, truncated or half-copied `*.tfrecord-0000X-of-0000N` file is otherwise only noticed when tf.data reaches
it - at the first training step, minutes into a run, with an error that does not say which file is bad.
`validate_shards` walks the TFRecord framing of every shard listed in the dataset's `dataset_info.json`:

    uint64 length (little endian) | uint32 masked crc32c(length bytes) | data[length] | uint32 masked crc32c(data)

It reads only the 12-byte record headers and seeks over the data, so tens of GB are checked in seconds. It
catches missing, empty and truncated files, damaged record headers, trailing garbage and record counts that
disagree with the dataset info; it does not checksum the record data itself (a flipped bit inside an image is
still only found by tf.data). Any problem raises `CorruptShardError` with one line naming the file and the fix.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import IO, Any

HEADER_BYTES = 12  # uint64 length + uint32 masked crc32c of the length
FOOTER_BYTES = 4  # uint32 masked crc32c of the data
_FIX = "re-download or regenerate the dataset"
_HEADER = struct.Struct("<QI")


class CorruptShardError(ValueError):
    """A dataset shard is missing, empty or damaged; the message is one line naming the file and the fix."""


@dataclass(frozen=True)
class ShardReport:
    """What `validate_shards` checked: shards, records (examples) and bytes on disk."""

    num_shards: int
    num_records: int
    num_bytes: int

    def __str__(self) -> str:
        return f"{self.num_shards} shards, {self.num_records} records, {self.num_bytes / 2**20:.1f} MiB verified"


def _crc32c_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli, reflected polynomial 0x82F63B78); table-driven, meant for a few bytes at a time."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The masked CRC-32C that TFRecord stores: rotate right by 15 bits and add 0xa282ead8 (mod 2**32)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _is_remote(path: Any) -> bool:
    return "://" in os.fspath(path)


def _exists(path: Any) -> bool:
    return path.exists() if _is_remote(path) else os.path.exists(os.fspath(path))


def _open(path: Any) -> IO[bytes]:
    # Remote shards (gs://...) go through the builder's epath objects; local ones through the plain file API.
    return path.open("rb") if _is_remote(path) else open(os.fspath(path), "rb")


def check_shard(path: str | os.PathLike[str], expected_records: int, shard: str = "", info: str = "") -> int:
    """Walk the TFRecord framing of one shard file; return its size in bytes or raise `CorruptShardError`.

    `expected_records` comes from the dataset info; `shard` ("3 of 16") and `info` (what to call the dataset info)
    only make the messages more precise. Records are numbered from 1 in the messages.
    """
    name = os.fspath(path)
    info = info or "the dataset info"
    if not _exists(path):
        where = f"shard {shard} listed in {info}" if shard else f"listed in {info}"
        raise CorruptShardError(f"{name}: missing ({where}, {expected_records} records); {_FIX}")
    try:
        file = _open(path)
    except OSError as err:
        raise CorruptShardError(f"{name}: cannot be opened ({err}); check its permissions or {_FIX}") from err
    with file:
        size = file.seek(0, os.SEEK_END)
        if size == 0:
            if expected_records == 0:
                return 0
            raise CorruptShardError(f"{name}: empty file (0 bytes, {info} expects {expected_records} records); {_FIX}")
        offset = 0
        records = 0
        while offset < size:
            file.seek(offset)
            header = file.read(HEADER_BYTES)
            problem = None
            if len(header) < HEADER_BYTES:
                problem = "short"
            else:
                length, length_crc = _HEADER.unpack(header)
                if masked_crc32c(header[:8]) != length_crc:
                    problem = "checksum"
                elif offset + HEADER_BYTES + length + FOOTER_BYTES > size:
                    problem = "short"
            if problem is not None:
                if records >= expected_records:
                    raise CorruptShardError(
                        f"{name}: {size - offset} unexpected trailing bytes at byte offset {offset}, after the "
                        f"{expected_records} records {info} expects; {_FIX}"
                    )
                if problem == "checksum":
                    raise CorruptShardError(
                        f"{name}: bad length checksum at record {records + 1} of {expected_records} "
                        f"(byte offset {offset}); {_FIX}"
                    )
                raise CorruptShardError(
                    f"{name}: truncated (ends inside record {records + 1} of {expected_records}); {_FIX}"
                )
            offset += HEADER_BYTES + length + FOOTER_BYTES
            records += 1
    if records != expected_records:
        raise CorruptShardError(
            f"{name}: record count mismatch (found {records}, {info} expects {expected_records}); {_FIX}"
        )
    return size


def _shard_paths(split_info: Any) -> list[Any]:
    """The split's shard files in shard-index order, aligned with `split_info.shard_lengths`."""
    template = getattr(split_info, "filename_template", None)
    num_shards = len(split_info.shard_lengths)
    if template is not None:
        # Not `split_info.filepaths`: that list is sorted by name, which is only index order for padded templates.
        return [template.sharded_filepath(shard_index=i, num_shards=num_shards) for i in range(num_shards)]
    return list(split_info.filepaths)


def validate_shards(builder: Any, split: str = "train") -> ShardReport:
    """Check every shard of `split` of a TFDS builder (see `episodes.open_builder`); raise `CorruptShardError`.

    Expected shard files and record counts come from `builder.info.splits[split]` (i.e. `dataset_info.json`).
    """
    info_path = os.path.join(os.fspath(builder.data_dir), "dataset_info.json")
    splits = builder.info.splits
    # Test membership first: `splits[...]` also accepts slicing instructions ("train[:10%]") and returns a
    # sub-split whose shard lengths are partial counts, which would not match the files.
    if split not in splits:
        raise CorruptShardError(f"{info_path}: has no {split!r} split (it lists {sorted(splits)}); {_FIX}")
    split_info = splits[split]
    shard_lengths = [int(n) for n in split_info.shard_lengths]
    if not shard_lengths:
        raise CorruptShardError(f"{info_path}: lists no shards for the {split!r} split; {_FIX}")
    file_format = getattr(builder.info, "file_format", None)
    if file_format is not None and getattr(file_format, "value", file_format) != "tfrecord":
        raise ValueError(
            f"{info_path}: shard validation supports only the tfrecord format, this dataset is stored as "
            f"{getattr(file_format, 'value', file_format)}"
        )
    paths = _shard_paths(split_info)
    total_bytes = 0
    for index, (path, expected) in enumerate(zip(paths, shard_lengths, strict=True)):
        total_bytes += check_shard(path, expected, shard=f"{index + 1} of {len(paths)}", info="dataset_info.json")
    return ShardReport(num_shards=len(paths), num_records=sum(shard_lengths), num_bytes=total_bytes)
