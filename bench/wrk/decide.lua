-- wrk script: POST /v1/decisions for stored customers picked at random.
-- bench/suite.py writes ids.lua beside a copy of this script (a Lua table `ids` of customer ids)
-- and the service key into the environment variable NEXTBEST_BENCH_KEY.
local here = debug.getinfo(1, "S").source:sub(2):match("(.*/)") or "./"
local ids = dofile(here .. "ids.lua")
local key = os.getenv("NEXTBEST_BENCH_KEY")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

local counter = 0

function setup(thread)
  counter = counter + 1
  thread:set("seed", counter)
end

function init(args)
  math.randomseed(seed or 1)
end

function request()
  local body = string.format('{"customer_id": "%s", "channel": "phone"}', ids[math.random(#ids)])
  return wrk.format(nil, nil, nil, body)
end
