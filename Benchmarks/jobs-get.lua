-- wrk script for Benchmarks/jobs: GET {prefix}{id} for every id in a file
-- (one per line), in turn; each thread starts at a different place.
--
--   wrk ... -s jobs-get.lua URL -- IDS_FILE [PREFIX]     PREFIX: /jobs/
--
-- The requests are built once in init(), as wrk's SCRIPTING advises, so the
-- per-request cost in wrk is a table lookup, the same for every server.

local threads = {}

function setup(thread)
    table.insert(threads, thread)
    thread:set("id", #threads)
end

function init(args)
    local prefix = args[2] or "/jobs/"
    requests = {}
    for line in assert(io.lines(args[1])) do
        if line ~= "" then
            table.insert(requests, wrk.format("GET", prefix .. line))
        end
    end
    assert(#requests > 0, "no ids in " .. args[1])
    index = ((id or 1) * 7919) % #requests
end

function request()
    index = index % #requests + 1
    return requests[index]
end
