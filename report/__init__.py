"""The HTML pages of runs and sweeps: `W/report.html` (report/pages.py, templates/)."""
