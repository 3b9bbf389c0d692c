"""kexaone.report: the run report card (report.md + self-contained report.html + report.json), its plots, and the
machine description."""
