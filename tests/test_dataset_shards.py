"""Up-front shard validation of RLDS datasets: valid data passes, each kind of damage names the bad file."""

from __future__ import annotations

import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import pytest

from prismatic.util.import_safety import import_tensorflow
from prismatic.vla.datasets.rlds.episodes import open_builder
from prismatic.vla.datasets.rlds.shards import (
    CorruptShardError,
    ShardReport,
    check_shard,
    crc32c,
    masked_crc32c,
    validate_shards,
)

NAME = "libero_spatial_no_noops"
NUM_EPISODES = 10  # 10 tasks x 1 episode
SHARD_LENGTHS = [3, 3, 4]  # the generator writes one shard; the fixture re-shards it to exercise several
FIX = "re-download or regenerate the dataset"


def version_dir(root: Path) -> Path:
    return root / NAME / "1.0.0"


def shard_path(root: Path, index: int, num_shards: int) -> Path:
    return version_dir(root) / f"{NAME}-train.tfrecord-{index:05d}-of-{num_shards:05d}"


def split_records(path: Path) -> list[bytes]:
    """The records of a TFRecord file, each with its framing (header, data, data checksum), back to back."""
    blob = path.read_bytes()
    records, offset = [], 0
    while offset < len(blob):
        (length,) = struct.unpack_from("<Q", blob, offset)
        end = offset + 12 + length + 4
        records.append(blob[offset:end])
        offset = end
    assert offset == len(blob)
    return records


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The synthetic suite as the generator writes it (one shard of 10 episodes)."""
    from prismatic.synthetic.rlds_writer import SyntheticSuiteSpec, write_synthetic_suite

    root = tmp_path_factory.mktemp("shards_generated")
    write_synthetic_suite(root, SyntheticSuiteSpec(NAME, episodes_per_task=1, seed=3), num_workers=1)
    return root


@pytest.fixture(scope="module")
def resharded(generated: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same dataset split into 3 shards (3, 3, 4 episodes), with `dataset_info.json` updated to match."""
    root = tmp_path_factory.mktemp("shards_resharded")
    shutil.copytree(generated / NAME, root / NAME)
    records = split_records(shard_path(root, 0, 1))
    assert len(records) == NUM_EPISODES
    shard_path(root, 0, 1).unlink()
    start = 0
    for index, length in enumerate(SHARD_LENGTHS):
        shard_path(root, index, len(SHARD_LENGTHS)).write_bytes(b"".join(records[start : start + length]))
        start += length
    info_file = version_dir(root) / "dataset_info.json"
    info = json.loads(info_file.read_text())
    (train,) = info["splits"]
    train["shardLengths"] = [str(n) for n in SHARD_LENGTHS]
    info_file.write_text(json.dumps(info, indent=2))
    return root


@pytest.fixture
def dataset(resharded: Path, tmp_path: Path) -> Path:
    """A private copy of the 3-shard dataset that a test may damage."""
    shutil.copytree(resharded / NAME, tmp_path / NAME)
    return tmp_path


def test_crc32c_check_values() -> None:
    assert crc32c(b"") == 0
    assert crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
    assert crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 B.4 test vector


def test_valid_dataset_passes(generated: Path) -> None:
    report = validate_shards(open_builder(generated, NAME))
    size = shard_path(generated, 0, 1).stat().st_size
    assert report == ShardReport(num_shards=1, num_records=NUM_EPISODES, num_bytes=size)
    assert "1 shards, 10 records" in str(report)


def test_valid_multi_shard_dataset_agrees_with_tensorflow(resharded: Path) -> None:
    tf = import_tensorflow()
    builder = open_builder(resharded, NAME)
    assert list(builder.info.splits["train"].shard_lengths) == SHARD_LENGTHS
    report = validate_shards(builder)
    paths = [shard_path(resharded, i, len(SHARD_LENGTHS)) for i in range(len(SHARD_LENGTHS))]
    assert report == ShardReport(len(SHARD_LENGTHS), NUM_EPISODES, sum(p.stat().st_size for p in paths))
    for path, expected in zip(paths, SHARD_LENGTHS, strict=True):
        # TensorFlow's reader checks both checksums of every record; its count must equal ours and the info's.
        assert int(tf.data.TFRecordDataset(str(path)).reduce(0, lambda n, _: n + 1)) == expected


def test_reader_agrees_with_tensorflow_writer(tmp_path: Path) -> None:
    tf = import_tensorflow()
    path = tmp_path / "mixed.tfrecord"
    payloads = [b"", b"x", b"0123456789ab", bytes(range(256)) * 40, b"\xff" * 100_000]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)
    assert check_shard(path, len(payloads)) == path.stat().st_size
    # Our masked CRC of each length equals the one TensorFlow wrote.
    for record, payload in zip(split_records(path), payloads, strict=True):
        assert struct.unpack_from("<I", record, 8)[0] == masked_crc32c(struct.pack("<Q", len(payload)))
    assert [bytes(r.numpy()) for r in tf.data.TFRecordDataset(str(path))] == payloads


def delete(path: Path) -> None:
    path.unlink()


def empty(path: Path) -> None:
    path.write_bytes(b"")


def truncate(path: Path) -> None:
    blob = path.read_bytes()
    path.write_bytes(blob[:-5])


def flip_length_byte(path: Path) -> None:
    blob = bytearray(path.read_bytes())
    second = len(split_records(path)[0])
    blob[second + 1] ^= 0x01  # the second record's length header
    path.write_bytes(bytes(blob))


def append_garbage(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\x00not a tfrecord record\x00")


def append_short_garbage(path: Path) -> None:
    with path.open("ab") as handle:
        handle.write(b"\n\n\n")


def keep_first_record(path: Path) -> None:
    path.write_bytes(split_records(path)[0])


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (delete, "missing (shard 2 of 3 listed in dataset_info.json, 3 records)"),
        (empty, "empty file (0 bytes, dataset_info.json expects 3 records)"),
        (truncate, "truncated (ends inside record 3 of 3)"),
        (flip_length_byte, "bad length checksum at record 2 of 3 (byte offset "),
        (append_garbage, "unexpected trailing bytes at byte offset "),
        (append_short_garbage, "3 unexpected trailing bytes at byte offset "),
        (keep_first_record, "record count mismatch (found 1, dataset_info.json expects 3)"),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_damage_is_caught_and_names_the_file(dataset: Path, damage: Callable[[Path], None], expected: str) -> None:
    bad = shard_path(dataset, 1, len(SHARD_LENGTHS))
    damage(bad)
    with pytest.raises(CorruptShardError) as caught:
        validate_shards(open_builder(dataset, NAME))
    message = str(caught.value)
    assert isinstance(caught.value, ValueError)
    assert message.startswith(f"{bad}: ")
    assert expected in message
    assert message.endswith(FIX)
    assert "\n" not in message


def test_flipped_length_reports_the_record_offset(dataset: Path) -> None:
    bad = shard_path(dataset, 2, len(SHARD_LENGTHS))
    records = split_records(bad)
    offset = len(records[0]) + len(records[1])
    blob = bytearray(bad.read_bytes())
    blob[offset + 9] ^= 0x80  # a byte of the third record's length checksum
    bad.write_bytes(bytes(blob))
    with pytest.raises(CorruptShardError, match=rf"record 3 of 4 \(byte offset {offset}\)"):
        validate_shards(open_builder(dataset, NAME))


def test_count_mismatch_with_info(dataset: Path) -> None:
    info_file = version_dir(dataset) / "dataset_info.json"
    info = json.loads(info_file.read_text())
    info["splits"][0]["shardLengths"] = ["3", "3", "5"]
    info_file.write_text(json.dumps(info))
    with pytest.raises(CorruptShardError, match=r"00002-of-00003: record count mismatch \(found 4, .* expects 5\)"):
        validate_shards(open_builder(dataset, NAME))


def test_unknown_split(dataset: Path) -> None:
    with pytest.raises(CorruptShardError, match=r"dataset_info.json: has no 'test' split"):
        validate_shards(open_builder(dataset, NAME), split="test")
