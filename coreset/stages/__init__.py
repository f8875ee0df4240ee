"""The study's stages without Ray, one module each, named as in every other layer
(``coreset/cluster/<stage>.py``, ``jobs/<stage>.py``, ``tests/stages/test_<stage>.py``):
what a stage computes, its resume plan read from the study root, and each piece of work."""
