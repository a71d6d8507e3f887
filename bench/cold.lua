-- A GET whose page number changes on every request (cycling 1..40), so no single cached answer
-- decides the figure. Args: run number, path (with or without a query string), and optionally the
-- name of the page parameter (default "page"; json-server's is "_page").
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local PAGES = 40
local path, page

function init(args)
   path = args[2] .. (args[2]:find("?", 1, true) and "&" or "?") .. (args[3] or "page") .. "="
   page = (thread_id * PAGES / 2) % PAGES
end

function request()
   page = page % PAGES + 1
   return wrk.format("GET", path .. page)
end
