"""The live path: sessions, rooms, write-behind buffer and flusher."""
