"""Posture: who can reach what (from the policies), what is actually used and denied
(from the audit log), and where the two disagree (over-permission findings).

``pdp posture --policies DIR LOG...`` reads audit logs the way ``pdp replay`` does
(files, rotated directories, ``nats://`` streams) and the policies through the engine
(:mod:`pdp.engine.access`); :mod:`pdp.posture.report` folds them into a
:class:`~pdp.posture.report.Posture`, :mod:`pdp.posture.render` shows it as a terminal
summary, JSON, or one self-contained HTML page.
"""
