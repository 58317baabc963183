package dev.allread.kstreams;

import org.apache.kafka.common.TopicPartition;
import org.apache.kafka.streams.processor.StateRestoreListener;
import org.slf4j.Logger;
import org.slf4j.LoggerFactory;

/**
 * Logs state restoration from the changelogs: one line per changelog partition restored, and
 * one line with the totals each time no partition is left restoring. The benchmark reads the
 * totals line to compute the restore rate (records/s from the first partition's start).
 */
final class RestoreLog implements StateRestoreListener {
    private static final Logger log = LoggerFactory.getLogger(RestoreLog.class);

    private long firstStartNanos = -1;
    private int restoring;
    private long restored;

    @Override
    public synchronized void onRestoreStart(TopicPartition tp, String store, long start, long end) {
        if (firstStartNanos < 0) {
            firstStartNanos = System.nanoTime();
        }
        restoring++;
        log.info("restoring store={} partition={} offsets={}..{}", store, tp, start, end);
    }

    @Override
    public synchronized void onBatchRestored(TopicPartition tp, String store, long batchEnd, long records) {
        restored += records;
    }

    @Override
    public synchronized void onRestoreEnd(TopicPartition tp, String store, long records) {
        restoring--;
        log.info("restored store={} partition={} records={}", store, tp, records);
        if (restoring == 0) {
            double seconds = (System.nanoTime() - firstStartNanos) / 1e9;
            log.info("restore done: restored={} seconds={}", restored, String.format("%.3f", seconds));
        }
    }

    @Override
    public synchronized void onRestoreSuspended(TopicPartition tp, String store, long records) {
        restoring--;
        log.info("restore suspended store={} partition={} records={}", store, tp, records);
    }
}
