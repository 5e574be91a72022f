"""Search your own video collection (see the package modules)."""
