"""The calendar periods a retention policy keeps snapshots by, alone in a module so that
the command line's parser (``prune --keep-daily`` ...) can name them without loading
the retention rules and attrs (start-up cost, #15)."""

PERIODS: tuple[str, ...] = ("hourly", "daily", "weekly", "monthly", "yearly")
