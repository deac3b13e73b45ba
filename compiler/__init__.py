"""mdoc core."""
