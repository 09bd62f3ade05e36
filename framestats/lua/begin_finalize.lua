-- Move a job to "finalizing" unless it ended meanwhile (a cancel must stay a cancel).
-- KEYS: job hash. Returns the state after the call (false: unknown job).
local state = redis.call('hget', KEYS[1], 'state')
if state == 'queued' or state == 'running' then
  redis.call('hset', KEYS[1], 'state', 'finalizing')
  return 'finalizing'
end
return state
