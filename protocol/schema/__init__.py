"""Machine-checkable op declarations: `ops.json` (generated from the actors' `@op`
declarations by `python -m moorage.protocol.schema.generate`), the validator of its JSON
Schema subset (validate.py), and the live check of replies that the tests turn on (live.py).
"""
