//! The Lua scripts that decide admission on the Redis side, atomically and with Redis's own clock,
//! so that every instance sees one rate and one count of open streams per client.
//!
//! Keys: `llm-stream:rate:{<client>}` holds the client's GCRA theoretical arrival time in ms
//! (expires when the budget is full again); `llm-stream:slots:{<client>}` and `llm-stream:slots`
//! are sorted sets of stream leases scored by their expiry in ms, renewed by their instance and
//! pruned on every admission, so that a crashed instance's slots come back by themselves.
//! With token budgets: `llm-stream:tokens:{<client>}` (and `llm-stream:tokens` for the whole
//! service) holds the time in ms at which the bucket is full again (expires then);
//! `llm-stream:reserved:{<client>}` is a hash of each open stream's lease id → tokens reserved,
//! expiring with the leases.

/// What the token scripts share: the server's clock, exact integer division on Lua's doubles (the
/// same arithmetic as `store::tokens::Bucket`), and a bucket's time ahead of now.
macro_rules! token_lua {
    () => {
        r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function idiv(p, q)
  local r = math.floor(p / q)
  if r * q > p then r = r - 1 elseif (r + 1) * q <= p then r = r + 1 end
  return r
end
local function ms(tokens, cap, win) return -idiv(-tokens * win, cap) end
local function left(ahead, cap, win)
  if ahead >= win then return 0 end
  return idiv(cap * (win - ahead), win)
end
local function ahead_of(key)
  local tat = tonumber(redis.call('GET', key) or '0')
  if tat > now then return tat - now end
  return 0
end
local function wait_for(ahead, need, cap, win)
  if need > cap then return win end
  local w = ahead - (win - ms(need, cap, win))
  if w < 0 then return 0 end
  return w
end
"
    };
}

/// KEYS: rate, client's slots, all slots, client's tokens, client's reservations, the service's
/// tokens. ARGV: interval ms (0: no rate limit), burst, max streams per client, max streams, lease
/// id, lease ms, token budget (0: none), its window ms, the service's budget (0: none), its window
/// ms, the prompt's estimate, the answer's max tokens, the fewest answer tokens worth admitting.
/// Returns {outcome, wait ms, remaining, reserved tokens, the client's tokens' ms ahead}: outcome is
/// `ok`, `rate_limited`, `token_budget_exhausted`, `service_budget_exhausted`, `at_capacity` or
/// `too_many_streams`; nothing is written unless it is `ok`. The reservation is kept under the
/// lease's id until it is settled, or pruned (spent in full) once its lease is gone.
pub const ADMIT: &str = concat!(
    token_lua!(),
    r"
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
    return {'rate_limited', allow_at - now, 0, 0, ahead_of(KEYS[4])}
  end
  remaining = math.floor((now + burst * interval - new_tat) / interval)
end
local cap, win = tonumber(ARGV[7]), tonumber(ARGV[8])
local gcap, gwin = tonumber(ARGV[9]), tonumber(ARGV[10])
local prompt = tonumber(ARGV[11])
local want, need = prompt + tonumber(ARGV[12]), prompt + tonumber(ARGV[13])
local reserve = 0
local ahead, gahead = 0, 0
if cap > 0 then
  ahead = ahead_of(KEYS[4])
  local l = left(ahead, cap, win)
  if l < need then
    return {'token_budget_exhausted', wait_for(ahead, need, cap, win), remaining + 1, 0, ahead}
  end
  reserve = math.min(want, l)
end
if gcap > 0 then
  gahead = ahead_of(KEYS[6])
  local l = left(gahead, gcap, gwin)
  if l < need then
    return {'service_budget_exhausted', wait_for(gahead, need, gcap, gwin), remaining + 1, 0, ahead}
  end
  if reserve == 0 then reserve = want end
  reserve = math.min(reserve, l)
end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
if redis.call('ZCARD', KEYS[3]) >= tonumber(ARGV[4]) then
  return {'at_capacity', 0, remaining + 1, 0, ahead}
end
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[3]) then
  return {'too_many_streams', 0, remaining + 1, 0, ahead}
end
if new_tat then
  redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
end
local expiry = now + tonumber(ARGV[6])
redis.call('ZADD', KEYS[2], expiry, ARGV[5])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('ZADD', KEYS[3], expiry, ARGV[5])
redis.call('PEXPIRE', KEYS[3], ARGV[6])
if reserve > 0 then
  -- Reservations whose lease is gone (an instance died mid-answer) stay spent: forget them,
  -- looked for only when there are at least as many records as live leases (this new one has
  -- none yet), which a stale record makes so once the leases it hid behind have ended; a look at
  -- every question would cost a command for each of the client's open answers. A stale record
  -- holds nothing of the budget, and goes with the hash when the client's last lease expires.
  if redis.call('HLEN', KEYS[5]) >= redis.call('ZCARD', KEYS[2]) then
    for _, lease in ipairs(redis.call('HKEYS', KEYS[5])) do
      if not redis.call('ZSCORE', KEYS[2], lease) then redis.call('HDEL', KEYS[5], lease) end
    end
  end
  if cap > 0 then
    ahead = ahead + ms(reserve, cap, win)
    redis.call('SET', KEYS[4], now + ahead, 'PX', ahead)
  end
  if gcap > 0 then
    gahead = gahead + ms(reserve, gcap, gwin)
    redis.call('SET', KEYS[6], now + gahead, 'PX', gahead)
  end
  redis.call('HSET', KEYS[5], ARGV[5], reserve)
  redis.call('PEXPIRE', KEYS[5], ARGV[6])
end
return {'ok', 0, remaining, reserve, ahead}
"
);

/// KEYS: client's slots, all slots, client's tokens, client's reservations, the service's tokens.
/// ARGV: lease id, what the answer cost, token budget (0: none), its window ms, the service's
/// budget (0: none), its window ms. Releases the lease and replaces its reservation by the cost;
/// a reservation already gone (expired with its lease) is not charged again. Returns the client's
/// tokens' ms ahead.
pub const SETTLE: &str = concat!(
    token_lua!(),
    r"
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
local reserved = tonumber(redis.call('HGET', KEYS[4], ARGV[1]) or '-1')
if reserved < 0 then return ahead_of(KEYS[3]) end
redis.call('HDEL', KEYS[4], ARGV[1])
local cost = tonumber(ARGV[2])
local function move(key, cap, win)
  local held, spent = ms(reserved, cap, win), ms(cost, cap, win)
  local tat = tonumber(redis.call('GET', key) or '0')
  if spent >= held then
    if tat < now then tat = now end
    tat = tat + spent - held
  else
    tat = tat - (held - spent)
  end
  if tat > now then redis.call('SET', key, tat, 'PX', tat - now) else redis.call('DEL', key) end
end
if tonumber(ARGV[3]) > 0 then move(KEYS[3], tonumber(ARGV[3]), tonumber(ARGV[4])) end
if tonumber(ARGV[5]) > 0 then move(KEYS[5], tonumber(ARGV[5]), tonumber(ARGV[6])) end
return ahead_of(KEYS[3])
"
);

/// KEYS: rate, client's slots, client's tokens, the service's tokens. ARGV: interval ms, burst.
/// Returns {remaining, open streams, the client's tokens' ms ahead, the service's tokens' ms
/// ahead}; writes nothing.
pub const PEEK: &str = concat!(
    token_lua!(),
    r"
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local remaining = 0
if interval > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
  if tat < now then tat = now end
  remaining = math.floor((now + burst * interval - tat) / interval)
end
return {remaining, redis.call('ZCOUNT', KEYS[2], now, '+inf'), ahead_of(KEYS[3]), ahead_of(KEYS[4])}
"
);

/// KEYS: all slots, then each lease's client slots and client reservations. ARGV: lease ms, then
/// each lease's id. Pushes every lease's expiry forward (re-adding it after a Redis restart), and
/// its client's reservations' with it.
pub const RENEW: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local expiry = now + tonumber(ARGV[1])
for j = 1, (#KEYS - 1) / 2 do
  local slots, reserved = KEYS[2 * j], KEYS[2 * j + 1]
  redis.call('ZADD', slots, expiry, ARGV[j + 1])
  redis.call('PEXPIRE', slots, ARGV[1])
  redis.call('PEXPIRE', reserved, ARGV[1])
  redis.call('ZADD', KEYS[1], expiry, ARGV[j + 1])
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return (#KEYS - 1) / 2
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
