-- Gateway access records in batches: one row per batch, one line of text per record (see
-- crates/store/src/access_log.rs). The gateway writes thousands a second; a row per record cost
-- more than the proxying itself. Existing records move over as one-record batches whose id is
-- their old seq, so they keep their order.
CREATE TABLE gateway_request_batches (
    id       BIGSERIAL PRIMARY KEY,
    first_at BIGINT NOT NULL,
    last_at  BIGINT NOT NULL,
    count    BIGINT NOT NULL,
    gateways TEXT NOT NULL,
    apps     TEXT NOT NULL,
    lines    TEXT NOT NULL
);
INSERT INTO gateway_request_batches (id, first_at, last_at, count, gateways, apps, lines)
SELECT seq, at, at, 1, ' ' || gateway_id || ' ', CASE WHEN app_id IS NULL THEN ' ' ELSE ' ' || app_id || ' ' END,
       CAST(at AS TEXT) || chr(9) ||
       replace(replace(replace(replace(COALESCE(app_id, ''), '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       replace(replace(replace(replace(gateway_id, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       replace(replace(replace(replace(kind, '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       replace(replace(replace(replace(COALESCE(interaction, ''), '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       replace(replace(replace(replace(COALESCE(resource_type, ''), '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       replace(replace(replace(replace(COALESCE(resource_id, ''), '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(9) ||
       CAST(status AS TEXT) || chr(9) || CAST(latency_us AS TEXT) || chr(9) ||
       replace(replace(replace(replace(COALESCE(request_id, ''), '\', '\\'), chr(9), '\t'), chr(10), '\n'), chr(13), '\r') || chr(10)
FROM gateway_requests;
SELECT setval(pg_get_serial_sequence('gateway_request_batches', 'id'), COALESCE((SELECT MAX(id) FROM gateway_request_batches), 0) + 1, false);
DROP TABLE gateway_requests;
