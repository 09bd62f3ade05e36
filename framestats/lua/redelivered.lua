-- The chunks delivered more than once: flat (index, deliveries) pairs of the attempts
-- hash, which a job's end drops. KEYS: attempts hash.
local out = {}
local all = redis.call('hgetall', KEYS[1])
for i = 1, #all, 2 do
  if tonumber(all[i + 1]) > 1 then
    out[#out + 1] = all[i]
    out[#out + 1] = all[i + 1]
  end
end
return out
