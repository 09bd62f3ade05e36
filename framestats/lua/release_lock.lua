-- Delete a lock only if it still holds the caller's token (a finalizer whose lock
-- expired cannot free another's). KEYS: lock. ARGV: token.
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
