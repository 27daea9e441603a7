"""Imported last by the chunk workers' fork server (importer/worker_server.py), after the chunk code.

Everything imported so far moves out of the garbage collector's reach, so the workers forked later neither walk
it in their collections nor write to it: a collection updates the header of every object it visits, and each
write copies a page the worker would otherwise share with the server.
"""

import gc

gc.freeze()
