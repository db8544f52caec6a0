"""Exit codes with a meaning to the process that reaps them."""

EX_OK = 0
# A worker that could not start serving (its sockets, its event loop): the
# supervisor counts the restart as "boot", not "crash".
EX_BOOT = 3
# sysexits.h EX_CONFIG: the configuration is refused. A worker exiting 78 is
# not respawned until a reload succeeds; `check-config` exits 78 too.
EX_CONFIG = 78
