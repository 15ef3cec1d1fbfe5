"""Choosing an architecture: the candidate pool, `advise` (a shortlist for a deployment and a data
budget), `benchmark` (latency and memory measured on this machine) and the bake-off on the user's
own images (`choose.bakeoff`)."""
