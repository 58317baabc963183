package dev.allread.kstreams;

import java.util.Map;
import org.apache.kafka.streams.state.RocksDBConfigSetter;
import org.rocksdb.BlockBasedTableConfig;
import org.rocksdb.Cache;
import org.rocksdb.CompressionType;
import org.rocksdb.LRUCache;
import org.rocksdb.Options;
import org.rocksdb.WriteBufferManager;

/**
 * Bounds the memory of every RocksDB instance of the process together, as the Kafka Streams
 * memory-management docs recommend: one LRU block cache shared by all stores, with the
 * memtables counted against it (WriteBufferManager), index and filter blocks cached in it too.
 * Without it each store instance (2 stores x 8 tasks here) gets its own 50 MB block cache and
 * up to 3 x 16 MB memtables. Sizes come from {@code -Dallread.rocksdb.cache.mb} (default 256)
 * and {@code -Dallread.rocksdb.memtable.mb} (default 64).
 */
public final class BoundedMemoryRocksDBConfig implements RocksDBConfigSetter {
    private static final long MB = 1024L * 1024L;
    private static final long CACHE_BYTES = Long.getLong("allread.rocksdb.cache.mb", 256) * MB;
    private static final long MEMTABLE_BYTES = Long.getLong("allread.rocksdb.memtable.mb", 64) * MB;

    // Shared by every store of the process: static, never closed (they live as long as the JVM).
    private static final Cache CACHE = new LRUCache(CACHE_BYTES, -1, false, 0.1);
    private static final WriteBufferManager WRITE_BUFFERS = new WriteBufferManager(MEMTABLE_BYTES, CACHE);

    @Override
    public void setConfig(String storeName, Options options, Map<String, Object> configs) {
        BlockBasedTableConfig table = (BlockBasedTableConfig) options.tableFormatConfig();
        table.setBlockCache(CACHE);
        table.setCacheIndexAndFilterBlocks(true);
        table.setCacheIndexAndFilterBlocksWithHighPriority(true);
        table.setPinTopLevelIndexAndFilter(true);
        options.setWriteBufferManager(WRITE_BUFFERS);
        options.setTableFormatConfig(table);
        // Small values, keys with long shared prefixes (room ids): LZ4 is cheap on 2 cores.
        options.setCompressionType(CompressionType.LZ4_COMPRESSION);
        // 2 cores: at most 2 background flush/compaction jobs (Streams' default follows the core count).
        options.setMaxBackgroundJobs(2);
    }

    @Override
    public void close(String storeName, Options options) {
        // The cache and the write buffer manager are shared: not closed per store.
    }
}
