-- PATCH /books/<random id in 1..N> with {"genre": <a random genre>}. Args: run number, N, genres.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local count, genres
local headers = signed_in({["Content-Type"] = "application/json"})

function init(args)
   count = tonumber(args[2])
   genres = {}
   for i = 3, #args do
      table.insert(genres, args[i])
   end
   math.randomseed(os.time() * 16 + thread_id)
end

function request()
   local body = string.format('{"genre": "%s"}', genres[math.random(1, #genres)])
   return wrk.format("PATCH", "/books/" .. math.random(1, count), headers, body)
end
