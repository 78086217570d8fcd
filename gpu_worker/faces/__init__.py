"""Face engines behind one small interface."""
