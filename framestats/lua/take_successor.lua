-- KEYS: pending list, successors hash. ARGV: chunk index.
return successor(KEYS[1], KEYS[2], ARGV[1])
