-- GET /books/<id> for a random id in 1..N. Args: run number, N.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local count

function init(args)
   count = tonumber(args[2])
   math.randomseed(os.time() * 16 + thread_id)
end

function request()
   return wrk.format("GET", "/books/" .. math.random(1, count))
end
