"""``trustbus demo``: a support desk's incident, run as real processes on an embedded server."""
