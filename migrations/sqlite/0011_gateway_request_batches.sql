-- Gateway access records in batches: one row per batch, one line of text per record (see
-- crates/store/src/access_log.rs). The gateway writes thousands a second; a row per record cost
-- more than the proxying itself. Existing records move over as one-record batches whose id is
-- their old seq, so they keep their order.
CREATE TABLE gateway_request_batches (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    gateways TEXT NOT NULL,
    apps     TEXT NOT NULL,
    lines    TEXT NOT NULL
);
INSERT INTO gateway_request_batches (id, first_at, last_at, count, gateways, apps, lines)
SELECT seq, at, at, 1, ' ' || gateway_id || ' ', CASE WHEN app_id IS NULL THEN ' ' ELSE ' ' || app_id || ' ' END,
       CAST(at AS TEXT) || char(9) ||
       replace(replace(replace(replace(COALESCE(app_id, ''), '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       replace(replace(replace(replace(gateway_id, '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       replace(replace(replace(replace(kind, '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       replace(replace(replace(replace(COALESCE(interaction, ''), '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       replace(replace(replace(replace(COALESCE(resource_type, ''), '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       replace(replace(replace(replace(COALESCE(resource_id, ''), '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(9) ||
       CAST(status AS TEXT) || char(9) || CAST(latency_us AS TEXT) || char(9) ||
       replace(replace(replace(replace(COALESCE(request_id, ''), '\', '\\'), char(9), '\t'), char(10), '\n'), char(13), '\r') || char(10)
FROM gateway_requests;
DROP TABLE gateway_requests;
