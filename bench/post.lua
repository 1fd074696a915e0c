-- wrk: POST a ~200-byte sample to /publish, as a legacy generator does.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["API-KEY"] = os.getenv("RADIO_BENCH_KEY")
-- RADIO_BENCH_NETWORK names the network (bench: retained; bench_volatile: not).
wrk.body = '{"network": "' .. (os.getenv("RADIO_BENCH_NETWORK") or "bench") .. '", "data": {"tick": 1234, "time": "2026-11-27T10:00:00Z", "vehicles": 412, '
    .. '"density": {"Main St": 0.21, "Oak Ave": 0.07, "Elm St": 0.33, "Pine Rd": 0.12}, "lights": "NS-green"}}'
