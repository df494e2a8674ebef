-- Lost mode: when a device was marked lost (by an operator, or by being overdue too long) and why.
ALTER TABLE devices ADD COLUMN lost_at BIGINT;
ALTER TABLE devices ADD COLUMN lost_reason TEXT;
