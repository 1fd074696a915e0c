"""The history recorder: numbers every sample a network accepts and keeps the latest ones."""
