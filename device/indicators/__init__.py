"""LEDs and buzzer: one distinct pattern per door outcome."""
