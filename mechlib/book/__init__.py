"""Book tooling: building the site, run records, sweeps, the browser check and the PDF,
and the one helper every chapter notebook calls."""
