"""The study report's pieces: what each figure reads and draws (``figures``), the page
(``page``) and the published numbers it compares with (``published``). The stage that
writes the report is :mod:`coreset.stages.report`."""
