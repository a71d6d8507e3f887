-- POST /books/<id>/borrow {"days": 14, "member_id": <m>}, then POST /books/<id>/return, then the
-- next book, over and over. circulation.py runs wrk with one connection per thread, so each thread
-- is one client waiting for each answer before it sends the next request: client i lends books
-- first + i * count .. first + i * count + count - 1 (in turn) to member first_member + i, signed in
-- as the benchmark's librarian. Args: run number, first member id, first book id, books per client.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local lend_headers = signed_in({["Content-Type"] = "application/json"})
local return_headers = signed_in({})
local lend_body, first, count, n, lending

function init(args)
   lend_body = string.format('{"days": 14, "member_id": %d}', tonumber(args[2]) + thread_id)
   count = tonumber(args[4])
   first = tonumber(args[3]) + thread_id * count
   n = 0
   lending = true
end

function request()
   local path = "/books/" .. (first + n % count)
   if lending then
      lending = false
      return wrk.format("POST", path .. "/borrow", lend_headers, lend_body)
   end
   lending = true
   n = n + 1
   return wrk.format("POST", path .. "/return", return_headers)
end
