-- POST /books with a new book on every request: a unique title and a unique, valid ISBN-13.
-- Args: run number, then genres to pick from.
--
-- The generated catalogue's ISBNs are 978-0/978-1 (bodies below 200,000,000); the ones made here
-- are 978 + 300,000,000 + run * 10,000,000 + thread * 1,000,000 + n, unique within a server for
-- up to 70 runs, 10 threads and a million requests per thread and run.
dofile((debug.getinfo(1, "S").source:match("^@(.*/)") or "./") .. "common.lua")

local AUTHORS = {"Ada Whitfield", "Tomas Okafor", "Mira Lindqvist", "Jonah Castellano"}
local PUBLISHERS = {"Harbor Lane Press", "Northgate Books", "Blue Finch Publishing"}
local WORDS = {"Silent", "River", "Winter", "Garden", "Lost", "Empire", "Glass", "Harbor", "Night", "Letters"}

local run, genres, base, n
local headers = signed_in({["Content-Type"] = "application/json"})

local function isbn13(body)
   local digits = "978" .. string.format("%09d", body)
   local sum = 0
   for i = 1, 12 do
      sum = sum + tonumber(digits:sub(i, i)) * (i % 2 == 1 and 1 or 3)
   end
   return digits .. ((10 - sum % 10) % 10)
end

local function pick(list)
   return list[math.random(1, #list)]
end

function init(args)
   run = tonumber(args[1])
   genres = {}
   for i = 2, #args do
      table.insert(genres, args[i])
   end
   base = 300000000 + run * 10000000 + thread_id * 1000000
   n = 0
   math.randomseed(os.time() * 16 + thread_id)
end

function request()
   n = n + 1
   local body = string.format(
      '{"title": "%s %s %d-%d-%d", "author": "%s", "genre": "%s", "publisher": "%s", ' ..
      '"publication_year": %d, "isbn": "%s"}',
      pick(WORDS), pick(WORDS), run, thread_id, n, pick(AUTHORS), pick(genres), pick(PUBLISHERS),
      math.random(1900, 2025), isbn13(base + n))
   return wrk.format("POST", "/books", headers, body)
end
