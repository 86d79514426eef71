"""What a person sees: live table, lines, JSON lines."""
