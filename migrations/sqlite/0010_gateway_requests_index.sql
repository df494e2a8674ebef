-- Gateway access records: the (gateway_id, at) index served no query (the request log lists
-- newest first by seq) and cost every one of the gateway's record inserts an index write.
DROP INDEX IF EXISTS gateway_requests_at;
