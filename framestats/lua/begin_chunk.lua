-- Count one delivery of a chunk of a known job.
-- KEYS: job hash, attempts hash[, the worker's heartbeat hash].
-- ARGV: chunk index, now[, max deliveries, the worker's label for the chunk].
-- Returns {state or false, deliveries}. The first chunk moves the job from queued to
-- running; the worker's "current" field names the chunk only when it will run.
local state = redis.call('hget', KEYS[1], 'state')
if not state then return {false, 0} end
-- a finished job's per-chunk hashes are gone: a late delivery must not bring one back
if state == 'done' or state == 'failed' or state == 'cancelled' then return {state, 0} end
local n = redis.call('hincrby', KEYS[2], ARGV[1], 1)
if state == 'queued' then
  redis.call('hset', KEYS[1], 'state', 'running')
  redis.call('hsetnx', KEYS[1], 'started', ARGV[2])
  state = 'running'
end
if #KEYS > 2 and state == 'running' and n <= tonumber(ARGV[3])
    and redis.call('exists', KEYS[3]) == 1 then
  redis.call('hset', KEYS[3], 'current', ARGV[4])
end
return {state, n}
