-- Keep a chunk's error (the newest 50) and count it; an error recorded after the job
-- ended expires with the job's other keys.
-- KEYS: job hash, errors list, metrics hash. ARGV: the error (JSON).
redis.call('lpush', KEYS[2], ARGV[1])
redis.call('ltrim', KEYS[2], 0, 49)
redis.call('hincrby', KEYS[3], 'chunk_errors', 1)
local ttl = redis.call('pttl', KEYS[1])
if ttl > 0 then redis.call('pexpire', KEYS[2], ttl) end
