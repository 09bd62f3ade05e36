-- Record a committed chunk and take its successor, in one step.
-- KEYS: job hash, done set, per-worker frames hash, metrics hash, pending list,
--       successors hash.
-- ARGV: chunk index, frames, bytes, worker id, now[, a field of the job hash, its value].
-- Returns {chunks done (-1: unknown job), successor (false: none to publish)}. A
-- duplicate delivery counts nothing; a job Redis forgot is not half re-created.
if redis.call('exists', KEYS[1]) == 0 then return {-1, false} end
if ARGV[6] then redis.call('hset', KEYS[1], ARGV[6], ARGV[7]) end
if redis.call('sadd', KEYS[2], ARGV[1]) == 1 then
  redis.call('hincrby', KEYS[1], 'frames_done', ARGV[2])
  redis.call('hincrby', KEYS[1], 'bytes_done', ARGV[3])
  redis.call('hset', KEYS[1], 'last_progress', ARGV[5])
  redis.call('hincrby', KEYS[3], ARGV[4], ARGV[2])
  redis.call('hincrby', KEYS[4], 'frames', ARGV[2])
  redis.call('hincrby', KEYS[4], 'bytes', ARGV[3])
  redis.call('hincrby', KEYS[4], 'chunks', 1)
end
local done = redis.call('scard', KEYS[2])
local state = redis.call('hget', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then
  local ttl = redis.call('pttl', KEYS[1])  -- a finished job's keys all expire with its hash
  if ttl > 0 then
    redis.call('pexpire', KEYS[2], ttl)
    redis.call('pexpire', KEYS[3], ttl)
  end
  return {done, false}
end
return {done, successor(KEYS[5], KEYS[6], ARGV[1])}
