"""Developer scripts (``make services``)."""
