"""The transactional core: names and properties, records, patterns, recovery, lock."""
