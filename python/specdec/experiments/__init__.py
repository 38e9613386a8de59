"""End-to-end experiments on the shipped testbed: :mod:`.demo` (``specdec demo``, the main job) and :mod:`.sweep`
(``specdec sweep``); :mod:`.common` holds what they share."""
