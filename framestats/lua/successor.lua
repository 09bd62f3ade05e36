-- The pending chunk that finished chunk `index` releases into the queue window: taken
-- off the pending list once and remembered in the successors hash, so a redelivery of
-- `index` after a crash gets the same one again. '+...' once it was published: false.
local function successor(pending, successors, index)
  local got = redis.call('hget', successors, index)
  if got then
    if string.sub(got, 1, 1) == '+' then return false end
    return got
  end
  got = redis.call('lpop', pending) or ''
  redis.call('hset', successors, index, got)
  return got
end
