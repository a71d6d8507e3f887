-- The same GET on every request, signed in as the benchmark's librarian (BENCH_TOKEN).
-- Args: run number, path (with its query string).
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local req

function init(args)
   req = wrk.format("GET", args[2], signed_in({}))
end

function request()
   return req
end
