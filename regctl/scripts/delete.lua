-- Remove a registration and its index entry. KEYS: record, index  ARGV: digest.
redis.call('ZREM', KEYS[2], ARGV[1])
return redis.call('DEL', KEYS[1])
