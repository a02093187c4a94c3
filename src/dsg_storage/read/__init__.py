"""Reading repositories, live or offline (exported pools imported read-only), with a cache."""
