//! The Lua scripts that decide admission on the Redis side, atomically and with Redis's own clock,
//! so that every instance sees one rate and one count of open streams per client.
//!
//! Keys: `llm-stream:rate:{<client>}` holds the client's GCRA theoretical arrival time in ms
//! (expires when the budget is full again); `llm-stream:slots:{<client>}` and `llm-stream:slots`
//! are sorted sets of stream leases scored by their expiry in ms, renewed by their instance and
//! pruned on every admission, so that a crashed instance's slots come back by themselves.

/// KEYS: rate, client's slots, all slots. ARGV: interval ms (0: no rate limit), burst,
/// max streams per client, max streams, lease id, lease ms.
/// Returns {outcome, wait ms, remaining}: outcome is `ok`, `rate_limited`, `too_many_streams` or
/// `at_capacity`; nothing is written unless it is `ok`.
pub const ADMIT: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local remaining = 0
local new_tat = nil
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  new_tat = tat + interval
  local allow_at = new_tat - burst * interval
  if allow_at > now then
    return {'rate_limited', allow_at - now, 0}
  end
  remaining = math.floor((now + burst * interval - new_tat) / interval)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  return {'at_capacity', 0, remaining + 1}
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {'too_many_streams', 0, remaining + 1}
end
if new_tat then
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
local expiry = now + tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], expiry, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], expiry, ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
return {'ok', 0, remaining}
";

/// KEYS: rate, client's slots. ARGV: interval ms, burst. Returns {remaining, open streams}.
pub const PEEK: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local remaining = 0
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  remaining = math.floor((now + burst * interval - tat) / interval)
end
return {remaining, redis.call('ZCOUNT', KEYS[2], now, '+inf')}
";

/// KEYS: all slots, then each lease's client slots. ARGV: lease ms, then each lease's id.
/// Pushes every lease's expiry forward (re-adding it after a Redis restart).
pub const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], expiry, ARGV[i])
  redis.call('PEXPIRE', KEYS[i], ARGV[1])
  redis.call('ZADD', KEYS[1], expiry, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return #KEYS - 1
";

/// KEYS: the conversation's turns, its busy mark. ARGV: the stream taking the turn, the mark's ms,
/// whether the conversation is new. Returns {`ok`, turns…}, {`unknown`} or {`busy`}; marks it busy
/// only with `ok`.
pub const CONVERSATION_BEGIN: &str = r"
if ARGV[3] == '0' and redis.call('EXISTS', KEYS[1]) == 0 then
  -- A new conversation has no turns until its first answer ends.
  if redis.call('EXISTS', KEYS[2]) == 1 then
    return {'busy'}
  end
  return {'unknown'}
end
if not redis.call('SET', KEYS[2], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {'busy'}
end
local reply = {'ok'}
for _, turn in ipairs(redis.call('LRANGE', KEYS[1], 0, -1)) do
  table.insert(reply, turn)
end
return reply
";

/// KEYS: the conversation's turns, its busy mark. ARGV: the stream ending its turn, the turn as
/// JSON (empty: nothing to keep), most turns kept, the conversation's ms to live.
pub const CONVERSATION_END: &str = r"
if ARGV[2] ~= '' then
  redis.call('RPUSH', KEYS[1], ARGV[2])
  redis.call('LTRIM', KEYS[1], -tonumber(ARGV[3]), -1)
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
end
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('DEL', KEYS[2])
end
return 1
";
