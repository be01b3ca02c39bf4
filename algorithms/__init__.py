"""Named presets: one short file per published method."""
