-- Store each fact once (issue #9: the file grew ~2.4 KB per event).
-- notifications.ticket and .device_cid repeated what the body holds and were never
-- read; the index on notifications.type only served a count used by tests.
-- Together ~100 bytes per notification (bench/store_size.py, docs/operating.md).
-- SQLite rewrites the table for DROP COLUMN: a one-off, at the first start.
DROP INDEX notifications_type;
ALTER TABLE notifications DROP COLUMN ticket;
ALTER TABLE notifications DROP COLUMN device_cid;
