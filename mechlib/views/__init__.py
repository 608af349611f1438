"""Presentation: charts, tables and prose built from a chapter's numbers, and the quiet
settings that keep a page free of warnings and progress bars. Views read results; they
compute no measurement, and the core never imports them."""
