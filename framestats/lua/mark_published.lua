-- Mark a finished chunk's successor as published ('+' and its index), only while the job
-- runs: a finished job's successors hash is gone and must stay so.
-- KEYS: job hash, successors hash. ARGV: chunk index, '+' successor.
local state = redis.call('hget', KEYS[1], 'state')
if state == 'queued' or state == 'running' or state == 'finalizing' then
  redis.call('hset', KEYS[2], ARGV[1], ARGV[2])
end
