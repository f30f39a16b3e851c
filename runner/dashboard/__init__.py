"""The web dashboard: a client of the broker serving one read-only page (`runner dashboard`)."""
