-- gojob's server-side scripts for Valkey and Redis (one file, loaded by both store plugins).
-- Each script is the text between "--! name" markers. Every script takes the key prefix as ARGV[1]
-- (single-node servers; keys are built from it; the layout is in resp/__init__.py) and uses the
-- server's clock, so that leases and history timestamps do not depend on the nodes' clocks.
--! common
local P = ARGV[1]
local function now()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1e6
end
local function jstr(s)
  if s == nil or s == false or s == '' then return 'null' end
  return cjson.encode(s)
end
-- Records that cannot be read are set aside, never changed: reported in the corrupt set (in the shape
-- the Python side reports: {"key": ..., "reason": ..., "raw": ""}, the raw value read from the key
-- itself when reported), then skipped; the script goes on with the others. An instance key is read
-- with redis.pcall (a key of another type must not abort a script that has already popped or changed
-- other instances) and checked for the fields a script needs before anything is written to it.
local function set_aside(key, reason)
  redis.call('SADD', P .. 'corrupt', '{"key": ' .. cjson.encode(key) .. ', "reason": ' .. cjson.encode(reason) ..
             ', "raw": ""}')
end
-- a member of an index that is not one (it points nowhere): reported with its bytes, left out
local function set_aside_member(index, member, reason)
  redis.call('SADD', P .. 'corrupt', '{"key": ' .. cjson.encode(index .. ':' .. string.sub(member, 1, 100)) ..
             ', "reason": ' .. cjson.encode(reason) .. ', "raw": ' .. cjson.encode(member) .. ', "member": true, ' ..
             '"index": ' .. cjson.encode(index) .. '}')
end
local function wrong_type(key, want)
  local t = redis.call('TYPE', key)
  if type(t) == 'table' then t = t.ok or t[1] end
  set_aside(key, 'WRONGTYPE: holds a ' .. tostring(t) .. ', not a ' .. want)
end
-- HMGET of an instance key; false if the key is not a hash (it is set aside)
local function hm(key, ...)
  local f = redis.pcall('HMGET', key, ...)
  if f.err then
    wrong_type(key, 'hash')
    return false
  end
  return f
end
-- Field checks, as the Python side makes them (_FIELD_CHECKS): 's' text, not empty; 'i' an integer;
-- 'n' a number; 'I' absent or an integer; 'M' absent, '' or an integer (max_abandons).
local function is_int(v)
  return string.find(v, '^%-?%d+$') ~= nil
end
local function field_ok(v, c)
  if not v then return c == 'I' or c == 'M' end
  if c == 's' then return v ~= '' end
  if c == 'i' or c == 'I' then return is_int(v) end
  if c == 'n' then return tonumber(v) ~= nil end
  return v == '' or is_int(v)  -- 'M'
end
-- The names of the fields failing their checks ('' if none): `f` holds the values of `names` (as HMGET
-- reads them), `checks` one check letter per name ('-': not checked). Scripts call it only when a
-- quicker test of the same fields failed: the common case stays cheap.
local function bad_fields(names, f, checks)
  local bad = ''
  for j = 1, #checks do
    local c = string.sub(checks, j, j)
    if c ~= '-' and not field_ok(f[j], c) then
      if bad == '' then bad = names[j] else bad = bad .. ', ' .. names[j] end
    end
  end
  return bad
end
local function set_aside_fields(key, bad)
  set_aside(key, 'missing or invalid field(s): ' .. bad)
end
-- Every field of an instance hash that a node needs to decode it, and the counters scripts change
-- (checked before a claim changes anything): the same list as the Python side's _FIELD_CHECKS.
local INST_FIELDS = {'uuid', 'd', 'kind', 'priority', 'ready_ts', 'state', 'attempts', 'abandoned', 'seq',
                     'max_abandons'}
local INST_CHECKS = 'sssinsIIIM'
-- The limit of abandoned attempts of a record written before max_abandons existed (set from Python).
local DEFAULT_MAX_ABANDONS = @DEFAULT_MAX_ABANDONS@
-- State records are collected during a script and written by flush() at its end, a few ZADDs for
-- all of them (one call per key costs far less than one per record).
local HN, HG, HI, HORDER, HHEAD = 0, {}, {}, {}, {}
local function hist(uuid, kind, state, ts, attempt, node, detail)
  -- records written by one script call keep their order: each is a microsecond after the previous
  HN = HN + 1
  ts = ts + HN * 1e-6
  local score = string.format('%.6f', ts)
  local per = HI[uuid]
  if per == nil then
    per = {}
    HI[uuid] = per
    HORDER[#HORDER + 1] = uuid
    HHEAD[uuid] = '{"uuid":' .. cjson.encode(uuid) .. ',"kind":' .. cjson.encode(kind) .. ',"state":"'
  end
  local rec = HHEAD[uuid] .. state .. '","ts":' .. score .. ',"attempt":' .. (attempt or 0) .. ',"node":' ..
    jstr(node) .. ',"detail":' .. jstr(detail) .. '}'
  HG[#HG + 1] = score
  HG[#HG + 1] = rec
  per[#per + 1] = score
  per[#per + 1] = rec
end
-- (an instance's history key of another type is set aside and skipped: its records still go to {p}hist)
local function zadd_all(key, pairs_)
  for i = 1, #pairs_, 1000 do
    local r = redis.pcall('ZADD', key, unpack(pairs_, i, math.min(i + 999, #pairs_)))
    if type(r) == 'table' and r.err then
      wrong_type(key, 'zset')
      return
    end
  end
end
local function flush()
  if #HG > 0 then
    zadd_all(P .. 'hist', HG)
    for _, uuid in ipairs(HORDER) do zadd_all(P .. 'hist:i:' .. uuid, HI[uuid]) end
    HG, HI, HORDER, HHEAD = {}, {}, {}, {}
  end
end
local function ready_member(ready_ts, seq, uuid)
  return string.format('%017.0f', math.floor(ready_ts * 1e6)) .. ':' .. string.format('%015.0f', seq) .. ':' .. uuid
end
-- put a SCHEDULED instance in the ready set (due) or the delayed set (later); takes a new FIFO seq.
-- Notes why waiting nodes must hear of it: WAKE_READY when the ready set was empty (claimers may be
-- waiting; moot if a handoff then took everything), WAKE_DELAYED when the instance is now the first
-- delayed one (claimers wait until the old first).
local WAKE_READY, WAKE_DELAYED = false, false
local function place(prio, ready_ts, seq, uuid, t)
  if ready_ts <= t then
    if not WAKE_READY and redis.call('ZCARD', P .. 'ready') == 0 then WAKE_READY = true end
    redis.call('ZADD', P .. 'ready', prio, ready_member(ready_ts, seq, uuid))
  else
    local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
    if #head == 0 or tonumber(head[2]) > ready_ts then WAKE_DELAYED = true end
    redis.call('ZADD', P .. 'delayed', ready_ts, uuid)
  end
end
-- queue an instance again (its caller read and checked kind, priority and the ready time, a string)
local function push(key, uuid, t, kind, prio, ready)
  redis.call('HINCRBY', P .. 'queued', kind, 1)
  redis.call('ZADD', P .. 'waiting:' .. kind, ready, uuid)
  local seq = redis.call('INCR', P .. 'seq')
  redis.call('HSET', key, 'seq', seq)
  place(tonumber(prio), tonumber(ready), seq, uuid, t)
end
-- the message is the server time: a node whose claim emptied the ready set after it knows the
-- wake-up is old news
local function wake(t)
  if WAKE_DELAYED or (WAKE_READY and redis.call('ZCARD', P .. 'ready') > 0) then
    redis.call('PUBLISH', P .. 'wake', string.format('%.6f', t))
  end
end
-- an instance leaves the queue (claimed, canceled, cleared): counters and the per-kind index follow
local function unqueue(kind, uuid)
  redis.call('HINCRBY', P .. 'queued', kind, -1)
  redis.call('ZREM', P .. 'waiting:' .. kind, uuid)
end

-- set a field of a hash read by HGETALL (`at`: field -> index of its value in `flat`)
local function put(flat, at, name, value)
  local j = at[name]
  if j == nil then
    flat[#flat + 1] = name
    flat[#flat + 1] = value
    at[name] = #flat
  else
    flat[j] = value
  end
end

-- move due delayed instances to the ready set, then take up to `limit` ready ones for `node`;
-- appends their hashes to `out`, sets out[2] to when the next delayed instance is due ('' if none)
-- and out[1] as said at its end.
-- A suspect instance (abandoned > 0: a node died running it) is taken only alone: first in line, it
-- is the whole claim; reached after others, the claim ends before it. The members popped but not
-- taken go back to the ready set unchanged (the suspect first in line for the next claim).
-- A key that cannot be read (another type, a field missing) is set aside and skipped.
-- SUSPECT is set when a suspect was taken: its node must not be handed anything beside it.
local SUSPECT = false
local function claim_into(out, node, limit, lease, t)
  local due = redis.call('ZRANGEBYSCORE', P .. 'delayed', '-inf', t, 'LIMIT', 0, 1000)
  for _, uuid in ipairs(due) do
    redis.call('ZREM', P .. 'delayed', uuid)
    local key = P .. 'inst:' .. uuid
    local f = hm(key, 'state', 'priority', 'ready_ts', 'seq')
    if f and f[1] == 'SCHEDULED' then
      local prio, ready, seq = tonumber(f[2]), tonumber(f[3]), tonumber(f[4])
      if prio and ready and seq then
        redis.call('ZADD', P .. 'ready', prio, ready_member(ready, seq, uuid))
      else
        set_aside_fields(key, bad_fields({'state', 'priority', 'ready_ts', 'seq'}, f, 'sini'))
      end
    elseif f and not f[1] and redis.call('EXISTS', key) == 1 then
      set_aside_fields(key, 'state')
    end
  end
  local taken, stop, back = 0, false, nil
  local ts, lts = string.format('%.6f', t), string.format('%.6f', t + lease)
  while taken < limit and not stop do
    local popped = redis.call('ZPOPMIN', P .. 'ready', limit - taken)
    if #popped == 0 then break end
    for j = 1, #popped, 2 do
      local member = popped[j]
      if stop then
        back[#back + 1] = popped[j + 1]
        back[#back + 1] = member
      else
        local uuid = string.sub(member, 35)
        local key = P .. 'inst:' .. uuid
        local h
        if uuid == '' or string.byte(member, 18) ~= 58 or string.byte(member, 34) ~= 58 then  -- (58: ':')
          set_aside_member(P .. 'ready', member, 'not a queue entry ({ready_us:17}:{seq:15}:{uuid})')
          h = {}
        else
          h = redis.pcall('HGETALL', key)
        end
        if h.err then
          wrong_type(key, 'hash')
        elseif #h > 0 then  -- (none: a stale entry of a removed instance)
          local at = {}
          for k = 1, #h, 2 do at[h[k]] = k + 1 end
          local state, seq, kind, abandoned, attempts = h[at.state], h[at.seq], h[at.kind], h[at.abandoned],
            h[at.attempts]
          local id, d, prio, ready, max = h[at.uuid], h[at.d], h[at.priority], h[at.ready_ts], h[at.max_abandons]
          -- INST_CHECKS written out (the common case: one pass, no table), and a queued one has its seq
          if not (state and state ~= '' and kind and kind ~= '' and id and id ~= '' and d and d ~= ''
                  and prio and is_int(prio) and ready and tonumber(ready) and (not seq or is_int(seq))
                  and (not attempts or is_int(attempts)) and (not abandoned or is_int(abandoned))
                  and (not max or max == '' or is_int(max)) and (seq or state ~= 'SCHEDULED')) then
            local f = {}
            for k = 1, #INST_FIELDS do f[k] = h[at[INST_FIELDS[k]]] or false end
            local bad = bad_fields(INST_FIELDS, f, INST_CHECKS)
            if bad == '' then bad = 'seq' end  -- SCHEDULED without its queue order
            set_aside_fields(key, bad)
          elseif state == 'SCHEDULED' and string.format('%015.0f', tonumber(seq)) == string.sub(member, 19, 33) then
            local suspect = abandoned and tonumber(abandoned) > 0
            if suspect and taken > 0 then  -- not with others: it waits for the next claim, first in line
              stop = true
              back = {popped[j + 1], member}
            else
              unqueue(kind, uuid)
              attempts = redis.call('HINCRBY', key, 'attempts', 1)
              redis.call('HSET', key, 'state', 'PROCESSING', 'started_ts', ts, 'node', node, 'lease_ts', lts)
              redis.call('ZADD', P .. 'running', t + lease, uuid)
              hist(uuid, kind, 'PROCESSING', t, attempts, node, nil)
              put(h, at, 'state', 'PROCESSING')
              put(h, at, 'attempts', tostring(attempts))
              put(h, at, 'started_ts', ts)
              put(h, at, 'node', node)
              put(h, at, 'lease_ts', lts)
              out[#out + 1] = h
              taken = taken + 1
              if suspect then  -- alone: the claim ends here
                stop = true
                back = {}
                SUSPECT = true
              end
            end
          end
        end
      end
    end
  end
  if back ~= nil and #back > 0 then zadd_all(P .. 'ready', back) end
  local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
  if #head > 0 then out[2] = head[2] end
  -- out[1]: the server time if the ready set is now empty (wake-ups published before are old
  -- news to this node), else 0
  if redis.call('ZCARD', P .. 'ready') == 0 then out[1] = string.format('%.6f', t) else out[1] = 0 end
end

-- The registrations of nodes waiting for work (see the idle script): {node, free slots, lease, deadline}
-- each. One past its deadline (its node went away) is dropped.
local function registrations(t)
  local regs = {}
  local idle = redis.call('HGETALL', P .. 'idle')
  for j = 1, #idle, 2 do
    local limit, lease, deadline = string.match(idle[j + 1], '^(%S+) (%S+) (%S+)$')
    limit, lease, deadline = tonumber(limit), tonumber(lease), tonumber(deadline)
    if deadline == nil or deadline < t or limit == nil then
      redis.call('HDEL', P .. 'idle', idle[j])
    else
      regs[#regs + 1] = {idle[j], limit, lease, deadline}
    end
  end
  return regs
end
-- Send a waiting node the hashes of instances claimed for it; reg[2] already counts them out.
local function deliver(reg, hashes)
  redis.call('HINCRBY', P .. 'handed', reg[1], #hashes)
  if reg[2] <= 0 then
    redis.call('HDEL', P .. 'idle', reg[1])
  else
    redis.call('HSET', P .. 'idle', reg[1], string.format('%d %.6f %.6f', reg[2], reg[3], reg[4]))
  end
  redis.call('PUBLISH', P .. 'node:' .. reg[1], cjson.encode(hashes))
end

-- Hand ready instances straight to nodes waiting for work: the claim is made here and the instances
-- travel in the message to the node, which starts them with no further round trip. `regs`: the
-- registrations if the caller read them already.
local function handoff(t, regs)
  if redis.call('ZCARD', P .. 'ready') == 0 then return end
  for _, reg in ipairs(regs or registrations(t)) do
    if reg[2] > 0 then
      local got = {t, ''}
      SUSPECT = false
      claim_into(got, reg[1], reg[2], reg[3], t)
      if #got > 2 then
        local hashes = {}
        for k = 3, #got do hashes[#hashes + 1] = got[k] end
        reg[2] = reg[2] - #hashes
        if SUSPECT then reg[2] = 0 end  -- a suspect's node gets nothing beside it: its wait ends here
        deliver(reg, hashes)
      end
      if redis.call('ZCARD', P .. 'ready') == 0 then return end
    end
  end
end

--! idle
-- ARGV: prefix, node, limit, lease, wait, received ->
--   {drained_ts, next_due_or_'', pending, registered, hgetall...}
-- Closes the node's registration if one is open (`received` >= 0: how many instances the node got
-- through it; `pending` = handed but not yet received, which the node still reads from its channel),
-- then claims like `claim`. If that left the ready set empty, the slots still free (`registered`)
-- are registered as waiting (for `wait` seconds and a grace second), so that enqueues hand the node
-- instances directly; not if it took a suspect (nothing is handed to a node beside one).
local node, limit, lease, wait, received = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5]),
  tonumber(ARGV[6])
local t = now()
local pending = 0
if received >= 0 then
  pending = math.max(0, tonumber(redis.call('HGET', P .. 'handed', node) or 0) - received)
end
redis.call('HDEL', P .. 'idle', node)
redis.call('HDEL', P .. 'handed', node)
local out = {t, '', pending, 0}
claim_into(out, node, math.max(0, limit - pending), lease, t)
local left = limit - pending - (#out - 4)
if left > 0 and out[1] ~= 0 and not SUSPECT then
  redis.call('HSET', P .. 'idle', node, left .. ' ' .. string.format('%.6f', lease) .. ' ' ..
             string.format('%.6f', t + wait + 1))
  out[4] = left
end
flush()
return out

--! unidle
-- ARGV: prefix, node -> how many instances were handed to the node while it was registered
redis.call('HDEL', P .. 'idle', ARGV[2])
local n = redis.call('HGET', P .. 'handed', ARGV[2])
redis.call('HDEL', P .. 'handed', ARGV[2])
return tonumber(n or 0)

--! enqueue
-- ARGV: prefix, node, chained ('1'/'0'), n, then n times: uuid, kind, priority, ready_ts, schedule_id,
-- created_ts, max_retries, max_abandons ('' = no limit), d (the record's fixed part as JSON:
-- arguments, timeout, cron, created)
-- An instance that is due while nothing else is ready (or delayed and due) goes straight to a node
-- waiting for work: claimed here, without passing through the ready set and its indexes, and sent in
-- the node's message. The others are queued, and handoff() serves waiting nodes from the queue.
local node, chained, n = ARGV[2], ARGV[3] == '1', tonumber(ARGV[4])
local t = now()
local out = {}
local i = 5
local direct = nil  -- registrations of waiting nodes, read on first use
local sent = {}     -- node -> hashes handed to it directly
local function waiting_node()
  if direct == nil then direct = registrations(t) end
  for _, reg in ipairs(direct) do
    if reg[2] > 0 then return reg end
  end
  return nil
end
for k = 1, n do
  local uuid, kind, prio, ready, sid, created, retries, max_abandons, d =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6], ARGV[i + 7], ARGV[i + 8]
  i = i + 9
  local key = P .. 'inst:' .. uuid
  if redis.call('EXISTS', key) == 1 or (chained and sid ~= '' and redis.call('SISMEMBER', P .. 'sched:canceled', sid) == 1) then
    out[k] = 0
  else
    local h = {'uuid', uuid, 'd', d, 'kind', kind, 'priority', prio, 'ready_ts', ready, 'max_retries', retries,
               'max_abandons', max_abandons}
    if sid ~= '' then
      if not chained then redis.call('SREM', P .. 'sched:canceled', sid) end
      redis.call('SADD', P .. 'sched:' .. sid, uuid)
      h[#h + 1] = 'schedule_id'
      h[#h + 1] = sid
    end
    redis.call('ZADD', P .. 'all', created, uuid)
    hist(uuid, kind, 'CREATED', t, 0, node, nil)
    hist(uuid, kind, 'SCHEDULED', t, 0, node, nil)
    local ready_ts = tonumber(ready)
    local reg = nil
    if ready_ts <= t and redis.call('ZCARD', P .. 'ready') == 0 then
      local head = redis.call('ZRANGE', P .. 'delayed', 0, 0, 'WITHSCORES')
      if #head == 0 or tonumber(head[2]) > t then reg = waiting_node() end
    end
    if reg ~= nil then
      local to, lease = reg[1], reg[3]
      h[#h + 1] = 'state'; h[#h + 1] = 'PROCESSING'
      h[#h + 1] = 'attempts'; h[#h + 1] = '1'
      h[#h + 1] = 'started_ts'; h[#h + 1] = string.format('%.6f', t)
      h[#h + 1] = 'node'; h[#h + 1] = to
      h[#h + 1] = 'lease_ts'; h[#h + 1] = string.format('%.6f', t + lease)
      redis.call('HSET', key, unpack(h))
      redis.call('ZADD', P .. 'running', t + lease, uuid)
      hist(uuid, kind, 'PROCESSING', t, 1, to, nil)
      reg[2] = reg[2] - 1
      local list = sent[to]
      if list == nil then
        list = {}
        sent[to] = list
      end
      list[#list + 1] = h
    else
      local seq = redis.call('INCR', P .. 'seq')  -- FIFO order among the queued (a handed one needs none)
      h[#h + 1] = 'seq'; h[#h + 1] = tostring(seq)
      h[#h + 1] = 'state'; h[#h + 1] = 'SCHEDULED'
      redis.call('HSET', key, unpack(h))
      redis.call('HINCRBY', P .. 'queued', kind, 1)
      redis.call('ZADD', P .. 'waiting:' .. kind, ready, uuid)
      place(tonumber(prio), ready_ts, seq, uuid, t)
    end
    out[k] = 1
  end
end
if direct ~= nil then
  for _, reg in ipairs(direct) do
    if sent[reg[1]] ~= nil then deliver(reg, sent[reg[1]]) end
  end
end
if WAKE_READY then handoff(t, direct) end
wake(t)
flush()
return out

--! claim
-- ARGV: prefix, node, limit, lease -> {drained_ts, next_due_or_'', {hgetall...}, ...}
local t = now()
local out = {t, ''}
claim_into(out, ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), t)
flush()
return out

--! extend
-- ARGV: prefix, node, lease, uuids... -> {lost..., '|', cancel_requested...}
-- (a key that cannot be read is lost to the node: it is set aside, and the reclaim drops its lease)
local node, lease = ARGV[2], tonumber(ARGV[3])
local t = now()
local lost, cancel = {}, {}
for i = 4, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = hm(key, 'state', 'node', 'cancel')
  if not f or f[1] ~= 'PROCESSING' or f[2] ~= node then
    lost[#lost + 1] = uuid
  else
    redis.call('HSET', key, 'lease_ts', string.format('%.6f', t + lease))
    redis.call('ZADD', P .. 'running', t + lease, uuid)
    if f[3] == '1' then cancel[#cancel + 1] = uuid end
  end
end
local out = lost
out[#out + 1] = '|'
for _, u in ipairs(cancel) do out[#out + 1] = u end
return out

--! reclaim
-- ARGV: prefix, node -> uuids re-queued
-- An expired lease's instance is re-queued with abandoned + 1, or ends CANCELED if its cancel was
-- asked, or ends TERMINATED once `abandoned` reaches its max_abandons (absent: the default, for
-- records written before the field; '': no limit), with the error and history detail the Python side
-- builds in gojob_core.abc.abandon_limit_message. A key that cannot be read is set aside (its
-- running entry is dropped, so it does not come back).
local RECLAIM = {'state', 'node', 'cancel', 'kind', 'attempts', 'priority', 'ready_ts', 'abandoned', 'max_abandons'}
local node = ARGV[2]
local t = now()
local expired = redis.call('ZRANGEBYSCORE', P .. 'running', '-inf', t, 'LIMIT', 0, 500)
local out = {}
for _, uuid in ipairs(expired) do
  redis.call('ZREM', P .. 'running', uuid)
  local key = P .. 'inst:' .. uuid
  local f = hm(key, unpack(RECLAIM))
  if f and f[1] == 'PROCESSING' then
    local bad = bad_fields(RECLAIM, f, '---siinIM')
    if bad ~= '' then
      set_aside_fields(key, bad)
    else
      local lost_node = f[2]
      if not lost_node or lost_node == '' then lost_node = '?' end
      redis.call('HDEL', key, 'lease_ts')
      if f[3] == '1' then
        redis.call('HSET', key, 'state', 'CANCELED', 'finished_ts', string.format('%.6f', t))
        hist(uuid, f[4], 'CANCELED', t, tonumber(f[5]), node, 'canceled; node ' .. lost_node .. ' lost its lease')
      else
        local abandoned = redis.call('HINCRBY', key, 'abandoned', 1)
        local max = DEFAULT_MAX_ABANDONS
        if f[9] == '' then max = nil elseif f[9] then max = tonumber(f[9]) end
        if max ~= nil and abandoned >= max then
          local msg = 'AbandonedError: attempt ' .. f[5] .. ' abandoned: node ' .. lost_node .. ' lost its lease; ' ..
            string.format('%d', max) .. ' attempts abandoned (max_abandons), not re-queued'
          redis.call('HSET', key, 'state', 'TERMINATED', 'finished_ts', string.format('%.6f', t), 'error', msg)
          hist(uuid, f[4], 'TERMINATED', t, tonumber(f[5]), node, msg)
        else
          redis.call('HSET', key, 'state', 'SCHEDULED')
          hist(uuid, f[4], 'SCHEDULED', t, tonumber(f[5]), node,
               'attempt ' .. f[5] .. ' abandoned: node ' .. lost_node .. ' lost its lease; re-queued')
          push(key, uuid, t, f[4], f[6], f[7])
          out[#out + 1] = uuid
        end
      end
    end
  elseif f and not f[1] and redis.call('EXISTS', key) == 1 then
    set_aside_fields(key, 'state')
  end
end
wake(t)
flush()
return out

--! finish
-- ARGV: prefix, node, limit, lease, n, then n times: uuid, state, result_json ('' = none), error,
-- retry_at ('' = none), detail, attempt ('' = any) -> {n oks..., drained_ts, next_due_or_'', hgetall of up
-- to `limit` newly claimed...}
-- An outcome is written only while the instance is PROCESSING, held by `node`, in that attempt: an
-- attempt that outlived its lease cannot pass its result off as a newer attempt's (even the same node's).
-- Finishing and claiming the next instances in one call is where a busy node saves round trips.
local FINISH = {'state', 'node', 'cancel', 'kind', 'attempts', 'max_retries', 'abandoned', 'priority'}
local node, limit, lease, n = ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
local t = now()
local out, requeued = {}, false
local i = 6
for k = 1, n do
  local uuid, state, result, err, retry_at, detail, attempt =
    ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], ARGV[i + 4], ARGV[i + 5], ARGV[i + 6]
  i = i + 7
  local key = P .. 'inst:' .. uuid
  local f = hm(key, unpack(FINISH))
  out[k] = 0
  if f and f[1] == 'PROCESSING' and f[2] == node and (attempt == '' or f[5] == attempt) then
    -- (what this script cannot do without: the full checks only if these fail)
    if not (f[4] and f[4] ~= '' and tonumber(f[5]) and tonumber(f[8])) then
      set_aside_fields(key, bad_fields(FINISH, f, '---siIIi'))
      redis.call('ZREM', P .. 'running', uuid)
    else
      redis.call('ZREM', P .. 'running', uuid)
      redis.call('HDEL', key, 'lease_ts')
      local attempts = tonumber(f[5])
      local d = err
      if d == '' then d = detail end
      hist(uuid, f[4], state, t, attempts, node, d)
      if retry_at ~= '' and f[3] ~= '1' then
        redis.call('HSET', key, 'state', 'SCHEDULED', 'ready_ts', retry_at, 'error', err)
        -- abandoned attempts (their node died) are not failures: the retry count leaves them out
        local failed = attempts - (tonumber(f[7]) or 0)
        hist(uuid, f[4], 'SCHEDULED', t, attempts, node, 'retry ' .. failed .. ' of ' .. (f[6] or '0') ..
             ' in ' .. string.format('%.3f', math.max(0, tonumber(retry_at) - t)) .. ' s')
        push(key, uuid, t, f[4], f[8], retry_at)
        requeued = true
      else
        if retry_at ~= '' then
          state = 'CANCELED'
          hist(uuid, f[4], 'CANCELED', t, attempts, node, 'canceled')
        end
        redis.call('HSET', key, 'state', state, 'finished_ts', string.format('%.6f', t), 'error', err)
        if result ~= '' then redis.call('HSET', key, 'result', result) end
      end
      out[k] = 1
    end
  end
end
wake(t)
local claimed = {0, ''}
if limit > 0 then claim_into(claimed, node, limit, lease, t) end
out[#out + 1] = claimed[1]
out[#out + 1] = claimed[2]
for j = 3, #claimed do out[#out + 1] = claimed[j] end
flush()
return out

--! release
-- ARGV: prefix, node, uuids...
local RELEASE = {'state', 'node', 'kind', 'attempts', 'priority', 'ready_ts'}
local node = ARGV[2]
local t = now()
for i = 3, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = hm(key, unpack(RELEASE))
  if f and f[1] == 'PROCESSING' and f[2] == node then
    local bad = bad_fields(RELEASE, f, '--siin')
    if bad ~= '' then
      set_aside_fields(key, bad)
    else
      redis.call('ZREM', P .. 'running', uuid)
      redis.call('HDEL', key, 'lease_ts')
      local a = math.max(0, tonumber(f[4]) - 1)
      redis.call('HSET', key, 'state', 'SCHEDULED', 'attempts', a)
      hist(uuid, f[3], 'SCHEDULED', t, a, node, 'released by node ' .. node)
      push(key, uuid, t, f[3], f[5], f[6])
    end
  end
end
wake(t)
flush()
return 1

--! cancel
-- ARGV: prefix, uuid, node, schedule id
-- With a uuid (and no schedule id): cancel that instance only -> hgetall of the instance after the
-- change, {} if none, or the reason (a string) if its key cannot be read (it is set aside).
-- With a schedule id (and uuid ''): stop that occurrence chain (Store.cancel_schedule): mark it
-- canceled (a chained enqueue is refused from now on), cancel its waiting occurrences, leave a running
-- one be -> the uuids made CANCELED.
local CANCEL = {'state', 'cancel', 'kind', 'attempts', 'ready_ts', 'seq'}
local uuid, node, sid = ARGV[2], ARGV[3], ARGV[4]
local t = now()
local targets = {uuid}
local key = P .. 'inst:' .. uuid
if sid ~= '' then
  redis.call('SADD', P .. 'sched:canceled', sid)
  targets = redis.call('SMEMBERS', P .. 'sched:' .. sid)
  table.sort(targets)
else
  local head = hm(key, 'state')
  if not head then return 'WRONGTYPE: the instance key is not a hash' end
  if not head[1] then
    if redis.call('EXISTS', key) == 0 then return {} end
    set_aside_fields(key, 'state')
    return 'missing or invalid field(s): state'
  end
end
local canceled = {}
for _, u in ipairs(targets) do
  local k = P .. 'inst:' .. u
  local f = hm(k, unpack(CANCEL))
  if f and (f[1] == 'SCHEDULED' or f[1] == 'CREATED') then
    local bad = bad_fields(CANCEL, f, '--s-ni')
    if bad ~= '' then
      set_aside_fields(k, bad)
    else
      redis.call('HSET', k, 'state', 'CANCELED', 'finished_ts', string.format('%.6f', t))
      redis.call('ZREM', P .. 'delayed', u)
      redis.call('ZREM', P .. 'ready', ready_member(tonumber(f[5]), tonumber(f[6]), u))
      unqueue(f[3], u)
      hist(u, f[3], 'CANCELED', t, tonumber(f[4]), node, 'canceled before it ran')
      canceled[#canceled + 1] = u
    end
  elseif sid == '' and f and f[1] == 'PROCESSING' and f[2] ~= '1' then
    redis.call('HSET', k, 'cancel', 1)
    redis.call('PUBLISH', P .. 'cancel', u)
  end
end
flush()
if sid ~= '' then return canceled end
return redis.call('HGETALL', key)

--! schedule_put
-- ARGV: prefix, schedule id, data (JSON), version ('' = only if absent) -> the new version, or false
-- A schedule record is a field of the {p}schedules hash: "{version} {data}".
local id, data, want = ARGV[2], ARGV[3], ARGV[4]
local cur = redis.call('HGET', P .. 'schedules', id)
local version = 0
if cur then
  version = tonumber(string.match(cur, '^(%d+) '))
  if want == '' or version == nil or tostring(version) ~= want then return false end
elseif want ~= '' then
  return false
end
version = version + 1
redis.call('HSET', P .. 'schedules', id, tostring(version) .. ' ' .. data)
return version

--! schedule_delete
-- ARGV: prefix, schedule id, version -> 1 if deleted
local cur = redis.call('HGET', P .. 'schedules', ARGV[2])
if cur and string.match(cur, '^(%d+) ') == ARGV[3] then
  redis.call('HDEL', P .. 'schedules', ARGV[2])
  return 1
end
return 0

--! clear
-- ARGV: prefix, uuids... -> how many removed (running ones are kept; a key that cannot be read is
-- set aside, never removed: drop_corrupt_record is the operator's way)
local n = 0
for i = 2, #ARGV do
  local uuid = ARGV[i]
  local key = P .. 'inst:' .. uuid
  local f = hm(key, 'state', 'schedule_id', 'kind')
  if f and f[1] and f[1] ~= 'PROCESSING' then
    if f[1] == 'SCHEDULED' and not field_ok(f[3], 's') then
      set_aside_fields(key, 'kind')
    else
      if f[1] == 'SCHEDULED' then unqueue(f[3], uuid) end
      redis.call('DEL', key)
      redis.call('ZREM', P .. 'all', uuid)
      redis.call('ZREM', P .. 'delayed', uuid)
      if f[2] and f[2] ~= '' then redis.call('SREM', P .. 'sched:' .. f[2], uuid) end
      n = n + 1
    end
  end
end
return n

--! drop
-- ARGV: prefix, key ('' or a key to delete), uuid ('' or the instance whose key that is), n, n reports
-- to remove from the corrupt set, then pairs (sorted set, member): members to remove -> reports removed
-- An operator's decision (Store.drop_corrupt_record), never the store's own: an instance's key goes
-- with every index entry of the instance (the queue counters follow); history and log records that
-- could not be decoded leave the indexes they were in. Nothing happens if no report was there.
local key, uuid, n = ARGV[2], ARGV[3], tonumber(ARGV[4])
local removed = 0
for i = 5, 4 + n do removed = removed + redis.call('SREM', P .. 'corrupt', ARGV[i]) end
if removed == 0 then return 0 end
for i = 5 + n, #ARGV - 1, 2 do redis.call('ZREM', ARGV[i], ARGV[i + 1]) end
if key ~= '' then redis.call('DEL', key) end
if uuid ~= '' then
  redis.call('ZREM', P .. 'all', uuid)
  redis.call('ZREM', P .. 'delayed', uuid)
  redis.call('ZREM', P .. 'running', uuid)
  for _, kind in ipairs(redis.call('HKEYS', P .. 'queued')) do
    if redis.call('ZREM', P .. 'waiting:' .. kind, uuid) == 1 then redis.call('HINCRBY', P .. 'queued', kind, -1) end
  end
  -- its ready entry ({ready}:{seq}:{uuid}), if a claim did not pop it yet
  local pattern = '*:' .. string.gsub(uuid, '[%*%?%[%]\\]', '\\%0')
  local cursor = '0'
  repeat
    local r = redis.call('ZSCAN', P .. 'ready', cursor, 'MATCH', pattern, 'COUNT', 1000)
    cursor = r[1]
    for j = 1, #r[2], 2 do
      if string.sub(r[2][j], 35) == uuid then redis.call('ZREM', P .. 'ready', r[2][j]) end
    end
  until cursor == '0'
end
return removed

--! peek
-- ARGV: prefix, key -> {type, hex...}: what the key holds with every string hex-encoded, for a report
-- whose bytes the client could not decode losslessly (not UTF-8): a string's first 64 KiB; a hash's
-- fields and values; the first 1,000 elements of a list, set or sorted set (with scores)
local key = ARGV[2]
local t = redis.call('TYPE', key)
if type(t) == 'table' then t = t.ok or t[1] end
local items = {}
if t == 'string' then items = {redis.call('GETRANGE', key, 0, 65535)}
elseif t == 'hash' then items = redis.call('HGETALL', key)
elseif t == 'list' then items = redis.call('LRANGE', key, 0, 999)
elseif t == 'set' then items = redis.call('SRANDMEMBER', key, 1000)
elseif t == 'zset' then items = redis.call('ZRANGE', key, 0, 999, 'WITHSCORES')
end
local out = {tostring(t)}
for _, v in ipairs(items) do
  out[#out + 1] = (string.gsub(v, '.', function(c) return string.format('%02x', string.byte(c)) end))
end
return out

--! aside
-- ARGV: prefix, uuids... : instances a node claimed but could not decode leave the running index (so
-- no lease expiry brings them back); their hashes stay as they are, reported in the corrupt set
for i = 2, #ARGV do redis.call('ZREM', P .. 'running', ARGV[i]) end
return 1
