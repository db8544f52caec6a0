"""What crosses a process boundary between the supervisor, its workers and
its children, in one place both sides import: exit codes (exits), listen
and upstream endpoints (endpoint), the STATS keys a worker reports and the
supervisor exports (stats), the checks both config modules make of a TOML
value (validate), and running a child with a deadline (child).

A leaf: it imports none of our other packages (supervisor, worker,
netsetup), so any of them may import it (DESIGN.md, dependency direction).
"""
