-- Keys compared byte by byte.
--
-- Text columns take the database's collation. Unless that is "C", every comparison
-- in their B-trees (an insert into a million rows makes some twenty on its way down,
-- a foreign-key check as many again) goes through the C library's strcoll on copies
-- of both strings; "C.UTF-8", which orders the same way, is no exception.
-- These columns hold identifiers (notification ids, target names, delivery states,
-- vendor tickets), never text to sort for people, so byte order is what they need.
-- Rebuilds the indexes on them: a short exclusive lock on a young database, longer on
-- a large one (docs/deploy.md).
ALTER TABLE deliveries DROP CONSTRAINT deliveries_notification_id_fkey;
ALTER TABLE notifications ALTER COLUMN id TYPE text COLLATE "C";
ALTER TABLE deliveries
    ALTER COLUMN notification_id TYPE text COLLATE "C",
    ALTER COLUMN target TYPE text COLLATE "C",
    ALTER COLUMN state TYPE text COLLATE "C";
ALTER TABLE deliveries ADD CONSTRAINT deliveries_notification_id_fkey
    FOREIGN KEY (notification_id) REFERENCES notifications (id);
ALTER TABLE seen_tickets ALTER COLUMN ticket TYPE text COLLATE "C";
