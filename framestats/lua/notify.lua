-- Push a job's final state for its followers (--wait); the list lasts ARGV[2] ms, or less
-- when the job's keys expire sooner. KEYS: job hash, events list. ARGV: state, ms.
redis.call('rpush', KEYS[2], ARGV[1])
local keep = tonumber(ARGV[2])
local ttl = redis.call('pttl', KEYS[1])
if ttl > 0 and ttl < keep then keep = ttl end
redis.call('pexpire', KEYS[2], keep)
