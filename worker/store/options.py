"""RocksDB options: one memory budget per process, whatever the number of stores.

Every store shares one block cache, and one write-buffer manager charges the memtables
of all of them to that cache, so RocksDB's memory is capped by ``cache_bytes`` plus
table-reader overhead (design state-store §3.3). Per-store caches, as Quix Streams
uses, would grow with the number of owned partitions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rocksdict import (
    BlockBasedOptions,
    Cache,
    DBCompressionType,
    Options,
    Rdict,
    WriteBufferManager,
)

from worker.config import Settings
from worker.store.errors import translate

MIB = 1 << 20
_MEMTABLE_BYTES = 4 * MIB
_BLOCK_BYTES = 4 * 1024  # chosen by bench/store_get.py: a cold hit reads the least
_BLOOM_BITS = 10


@dataclass(frozen=True, slots=True)
class StoreOptions:
    cache_bytes: int = 64 * MIB
    write_buffer_bytes: int = 16 * MIB

    @classmethod
    def from_settings(cls, settings: Settings) -> StoreOptions:
        return cls(settings.state_cache_mb * MIB, settings.state_write_buffer_mb * MIB)


class StoreMemory:
    """The process's one block cache and write-buffer budget, and the options every
    store is opened with."""

    def __init__(self, options: StoreOptions = StoreOptions()) -> None:
        self.options = options
        self.cache = Cache(options.cache_bytes)
        # allow_stall=False: a full budget makes RocksDB flush, never block the loop.
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            options.write_buffer_bytes, False, self.cache
        )

    def rocksdb_options(self) -> Options:
        table = BlockBasedOptions()
        table.set_block_cache(self.cache)
        table.set_block_size(_BLOCK_BYTES)
        table.set_bloom_filter(_BLOOM_BITS, False)
        # Index and filter blocks live in the shared cache (bounded), and the ones of L0
        # files, which every get consults, cannot be evicted.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        o = Options(raw_mode=True)
        o.create_if_missing(True)
        o.set_block_based_table_factory(table)
        o.set_write_buffer_manager(self.write_buffers)
        o.set_write_buffer_size(min(_MEMTABLE_BYTES, self.options.write_buffer_bytes))
        o.set_max_write_buffer_number(2)
        o.set_max_total_wal_size(self.options.write_buffer_bytes)
        o.set_compression_type(DBCompressionType.lz4())
        o.set_max_open_files(256)
        o.set_keep_log_file_num(2)
        o.set_use_fsync(False)
        return o

    def open(self, path: Path) -> Rdict:
        """Open (or create) the RocksDB at ``path``; StoreError, StoreCorrupt or
        StoreLocked when it cannot be."""
        try:
            # The default column family's options are passed again on purpose: without
            # them rocksdict re-opens an existing DB with the options it loads from disk,
            # which have no bloom filter and a private 8 MiB cache (bench/store_get.py).
            return Rdict(str(path), self.rocksdb_options(), column_families={"default": self.rocksdb_options()})
        except Exception as exc:  # rocksdict raises plain Exception with RocksDB's status text
            raise translate(exc, f"cannot open store {path}") from exc

    def usage(self) -> int:
        """Bytes held in the shared cache, memtables included."""
        return int(self.cache.get_usage())
