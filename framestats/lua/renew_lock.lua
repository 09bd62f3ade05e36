-- Extend a lock only if it still holds the caller's token. KEYS: lock.
-- ARGV: token, milliseconds. Returns 1 when renewed, 0 when the lock is another's.
if redis.call('get', KEYS[1]) == ARGV[1] then
  return redis.call('pexpire', KEYS[1], ARGV[2])
end
return 0
