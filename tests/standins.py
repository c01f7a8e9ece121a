"""Same-shape local stand-ins for the hub (session fixtures shared by the slow tests).

Hub downloads are impossible here, so the paper-scale specs are rehearsed on folders of
the same shape: filled in by the paper-scale rehearsal (tests/test_rehearsal.py).
"""

from __future__ import annotations
