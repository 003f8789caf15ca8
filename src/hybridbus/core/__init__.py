"""Pure logic, no asyncio and no I/O: events and codecs, topics and the trie, the log's
vocabulary (positions, cursors, recovery), clocks and backoff."""
