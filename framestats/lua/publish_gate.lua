-- The last step before a finalizer renames the output into place: allowed only while
-- it still holds the finalize lock and the job is still finalizing (not cancelled).
-- Marks the job "publishing", which a cancel no longer overrides.
-- KEYS: lock, job hash. ARGV: token. Returns 1 when the finalizer may publish.
if redis.call('get', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('hget', KEYS[2], 'state') ~= 'finalizing' then return 0 end
redis.call('hset', KEYS[2], 'publishing', ARGV[1])
return 1
