"""A stop asked for by a signal never hangs the process that receives it.

``radio broker --engine mosquitto`` once ignored SIGTERM for good: its handler set a
``threading.Event`` while the main thread, inside that event's ``wait()``, held the event's own
lock, and the handler waited for it forever. Every command now waits on ``radio.stopping.Stop``.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

STORM = textwrap.dedent(
    """
    import signal
    from radio.stopping import Stop

    for round in range(300):
        stop = Stop()
        signal.signal(signal.SIGALRM, stop.set)
        signal.setitimer(signal.ITIMER_REAL, 0.00005 * (1 + round % 20))
        while not stop.wait(0):  # the main thread all but always inside wait(): the worst case
            pass
    print("stopped every time")
    """
)


def test_a_signal_can_set_a_stop_whatever_the_main_thread_is_doing_with_it():
    # The same loop with threading.Event in place of Stop hangs within a few rounds on Linux.
    done = subprocess.run(
        [sys.executable, "-c", STORM], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.stdout == "stopped every time\n", done.stderr
