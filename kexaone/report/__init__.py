"""kexaone.report: the run report card (report.md + self-contained report.html + report.json): `data` computes it
from a run directory, `card` renders it through `document` with the figures of `plots`; `machine` describes the
machine."""
